"""The model-side fakes: a ModelPatcher over the library's reference FLUX, FLUX schnell's model
sampling, a sampler that calls the model the way ComfyUI v0.8's samplers do, and a node runner
that validates inputs against the schema as ComfyUI's executor does."""

from __future__ import annotations

import copy
import inspect
from types import SimpleNamespace
from typing import Any

import comfy.model_management
import torch
from comfy.patcher_extension import WrapperExecutor, WrappersMP


class ModelSamplingDiscreteFlow:
    """FLUX schnell's model_sampling (shift 1, multiplier 1): timestep(sigma) = sigma."""

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return 1.0 - percent


def _get_attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _set_attr(obj: Any, path: str, value: Any) -> Any:
    *parents, last = path.split(".")
    for name in parents:
        obj = getattr(obj, name)
    old = getattr(obj, last)
    setattr(obj, last, value)
    return old


class ModelPatcher:
    def __init__(self, diffusion_model: torch.nn.Module, image_model: str = "flux") -> None:
        self.model = SimpleNamespace(
            diffusion_model=diffusion_model,
            model_sampling=ModelSamplingDiscreteFlow(),
            model_config=SimpleNamespace(unet_config={"image_model": image_model}),
        )
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.object_patches: dict[str, Any] = {}
        self.wrappers: dict[str, dict[str, list[Any]]] = {}
        self.additional_models: dict[str, list[Any]] = {}
        self.load_device = torch.device("cpu")

    def clone(self) -> ModelPatcher:
        n = self.__class__.__new__(self.__class__)
        n.model = self.model
        n.load_device = self.load_device
        n.model_options = copy.deepcopy(self.model_options)
        n.object_patches = self.object_patches.copy()
        n.wrappers = {t: {k: list(v) for k, v in keyed.items()} for t, keyed in self.wrappers.items()}
        n.additional_models = {k: [m.clone() for m in models] for k, models in self.additional_models.items()}
        return n

    def is_clone(self, other: Any) -> bool:
        return getattr(other, "model", None) is self.model

    def set_additional_models(self, key: str, models: list[Any]) -> None:
        self.additional_models[key] = models

    def get_additional_models_with_key(self, key: str) -> list[Any]:
        return self.additional_models.get(key, [])

    def get_nested_additional_models(self) -> list[Any]:
        """Every additional model, and theirs, each once (ComfyUI's order: breadth first)."""
        found: list[Any] = []
        pending = [m for models in self.additional_models.values() for m in models]
        while pending:
            model = pending.pop(0)
            if model not in found:
                found.append(model)
                pending.extend(m for models in model.additional_models.values() for m in models)
        return found

    def add_object_patch(self, name: str, obj: Any) -> None:
        self.object_patches[name] = obj

    def get_model_object(self, name: str) -> Any:
        if name in self.object_patches:
            return self.object_patches[name]
        return _get_attr(self.model, name)

    def add_wrapper_with_key(self, wrapper_type: str, key: str, wrapper: Any) -> None:
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def get_wrappers(self, wrapper_type: str, key: str) -> list[Any]:
        return self.wrappers.get(wrapper_type, {}).get(key, [])

    def all_wrappers(self, wrapper_type: str) -> list[Any]:
        return [w for keyed in self.wrappers.get(wrapper_type, {}).values() for w in keyed]


def _euler(patcher: ModelPatcher, x: torch.Tensor, sigmas: torch.Tensor, cond: Any, uncond: Any, cfg: float,
           callback: Any) -> torch.Tensor:
    diffusion_model = patcher.model.diffusion_model
    options = patcher.model_options
    wrappers = patcher.all_wrappers(WrappersMP.DIFFUSION_MODEL)

    def forward(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs):
        return diffusion_model(x, timestep, context, y, guidance)

    for i in range(len(sigmas) - 1):
        sigma = sigmas[i : i + 1]
        batches = [(1, uncond), (0, cond)] if cfg != 1.0 and uncond is not None else [(0, cond)]
        labels = [label for label, _ in batches]
        xs = torch.cat([x] * len(batches))
        context = torch.cat([c[0] for _, c in batches])
        y = torch.cat([c[1] for _, c in batches])
        transformer_options = dict(options["transformer_options"])
        transformer_options.update(cond_or_uncond=labels, sigmas=sigma.expand(x.shape[0]), sample_sigmas=sigmas)
        timestep = sigma.expand(xs.shape[0])
        run = WrapperExecutor(forward, diffusion_model, wrappers)
        out = run(xs, timestep, context, y, None, None, None, transformer_options)
        v = out.chunk(len(batches))
        velocity = v[-1] if len(batches) == 1 else v[0] + cfg * (v[1] - v[0])
        x = x + (sigmas[i + 1] - sigmas[i]) * velocity
        if callback is not None:
            callback(i, x)
    return x


def sample(patcher: ModelPatcher, noise: torch.Tensor, sigmas: torch.Tensor, cond: Any, uncond: Any = None,
           cfg: float = 1.0, callback: Any = None) -> torch.Tensor:
    """Euler sampling of a flow model; cond/uncond are (context, pooled) pairs. With cfg != 1 the
    uncond and cond chunks go through one model call, uncond first, as ComfyUI batches them. Object
    patches are set for the run and restored after, also when the run raises."""
    guider = SimpleNamespace(model_options=patcher.model_options, model_patcher=patcher)

    def outer(noise, latent, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, **kwargs):
        return _euler(patcher, noise * sigmas[0], sigmas, cond, uncond, cfg, callback)

    comfy.model_management.load_models_gpu([patcher, *patcher.get_nested_additional_models()])
    backup = {name: _set_attr(patcher.model, name, obj) for name, obj in patcher.object_patches.items()}
    try:
        run = WrapperExecutor(outer, guider, patcher.all_wrappers(WrappersMP.OUTER_SAMPLE))
        return run(noise, None, None, sigmas, None, callback, True, 0, latent_shapes=[noise.shape])
    finally:
        for name, obj in backup.items():
            _set_attr(patcher.model, name, obj)


class NodeInputError(ValueError):
    """What ComfyUI's validate_inputs reports before a node runs."""


def run_node(node: type, unique_id: str = "7", **given: Any) -> Any:
    """Validate `given` against the node's schema (required present, combo values among the
    options, numbers within min/max, defaults filled in), then call execute as ComfyUI does."""
    schema = node.define_schema()
    kwargs: dict[str, Any] = {}
    for spec in schema.inputs:
        if spec.id not in given:
            if spec.optional:
                continue
            if spec.default is None:
                raise NodeInputError(f"{schema.node_id}: required input {spec.id!r} missing")
            kwargs[spec.id] = spec.default
            continue
        value = given[spec.id]
        if spec.io_type == "COMBO" and value not in (spec.options or []):
            raise NodeInputError(f"{schema.node_id}: value not in list: {spec.id}: {value!r} not in {spec.options}")
        if spec.io_type in ("INT", "FLOAT") and (
            spec.min is not None and value < spec.min or spec.max is not None and value > spec.max
        ):
            raise NodeInputError(f"{schema.node_id}: {spec.id} {value} outside [{spec.min}, {spec.max}]")
        kwargs[spec.id] = value
    unknown = set(given) - {spec.id for spec in schema.inputs}
    if unknown:
        raise NodeInputError(f"{schema.node_id}: unknown inputs {sorted(unknown)}")
    parameters = inspect.signature(node.execute).parameters
    missing = [name for name in kwargs if name not in parameters]
    assert not missing, f"{schema.node_id}.execute does not take schema inputs {missing}"
    node.hidden = SimpleNamespace(unique_id=unique_id)
    with torch.inference_mode():  # as ComfyUI's PromptExecutor runs every node
        output = node.execute(**kwargs)
    assert len(output.args) == len(schema.outputs), (
        f"{schema.node_id} returned {len(output.args)} of {len(schema.outputs)} outputs"
    )
    return output
