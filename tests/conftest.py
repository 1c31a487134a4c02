"""Test-wide safety: nothing may reach the network. huggingface_hub reads HF_HUB_OFFLINE when it is
first imported, which happens after this file runs."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
