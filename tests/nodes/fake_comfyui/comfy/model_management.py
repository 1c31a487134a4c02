"""Fake of the few comfy.model_management functions the pack calls."""

import torch


class InterruptProcessingException(Exception):
    pass


interrupt_processing = False


def get_torch_device() -> torch.device:
    return torch.device("cpu")


def interrupt_current_processing(value: bool = True) -> None:
    global interrupt_processing
    interrupt_processing = value


def throw_exception_if_processing_interrupted() -> None:
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()


loaded: list = []


def load_models_gpu(models: list) -> None:
    """Records the request; the fake keeps everything on the CPU."""
    loaded.extend(models)


def unet_offload_device() -> torch.device:
    return torch.device("cpu")
