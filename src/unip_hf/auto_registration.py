"""Registration of the UNIP classes with the transformers Auto classes and pipeline registry, done lazily: each part
runs when the transformers module it extends has been imported, so `import unip_hf` itself imports neither torch
nor transformers.

| part | runs once this is imported | registers |
|---|---|---|
| configs | `transformers.models.auto.configuration_auto` (`AutoConfig`) | `"unip"`, `"unip_small_target"` |
| models | `transformers.models.auto.modeling_auto` (`AutoModel`, ...) | `AutoModel`, `AutoModelForSemanticSegmentation`, `AutoBackbone` |
| image processors | `transformers.models.auto.image_processing_auto` | `AutoImageProcessor` for both configs |
| pipeline | `transformers.pipelines` (`pipeline`) | the `"infrared-image-segmentation"` task |

How: `install()` puts a finder at the front of `sys.meta_path` that, while any part is waiting, sees every import of
a `transformers` or `unip_hf` module and, once that module has executed, runs each waiting part whose trigger module
is loaded, as soon as no module of either package is half-way through its own import (a part imports UNIP's
modeling files, which import transformers modules; doing that while one of them is still executing would see it
half-built). A part that fails there is reported as a warning, never as a failure of the user's import, and waits. The finder
only wraps the loader's `exec_module` for that one import and leaves the module, its spec and loader as they are;
it removes itself when every part has run. Parts whose trigger was imported before `unip_hf` run at `install()`.
`register_auto_classes()` runs every part now (importing what they need); all parts are idempotent.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

_done: set[str] = set()


def _register_configs() -> None:
    from transformers import AutoConfig

    from unip_hf.models.configuration_unip import UnipConfig, UnipSmallTargetConfig

    AutoConfig.register("unip", UnipConfig, exist_ok=True)
    AutoConfig.register("unip_small_target", UnipSmallTargetConfig, exist_ok=True)


def _register_models() -> None:
    from transformers import AutoBackbone, AutoModel, AutoModelForSemanticSegmentation

    from unip_hf.models.configuration_unip import UnipConfig, UnipSmallTargetConfig
    from unip_hf.models.modeling_unip import UnipBackbone, UnipViTModel
    from unip_hf.models.modeling_unip_segmentation import UnipForSemanticSegmentation
    from unip_hf.models.modeling_unip_small_target import UnipForSmallTargetSegmentation

    AutoModel.register(UnipConfig, UnipViTModel, exist_ok=True)
    AutoModelForSemanticSegmentation.register(UnipConfig, UnipForSemanticSegmentation, exist_ok=True)
    AutoBackbone.register(UnipConfig, UnipBackbone, exist_ok=True)
    AutoModelForSemanticSegmentation.register(UnipSmallTargetConfig, UnipForSmallTargetSegmentation, exist_ok=True)


def _register_image_processors() -> None:
    from transformers import AutoImageProcessor

    from unip_hf.models.configuration_unip import UnipConfig, UnipSmallTargetConfig
    from unip_hf.models.image_processing_unip import UnipImageProcessor

    for config_class in (UnipConfig, UnipSmallTargetConfig):
        AutoImageProcessor.register(config_class, image_processor_classes={"pil": UnipImageProcessor}, exist_ok=True)


def _register_pipeline() -> None:
    from unip_hf.models.pipeline_unip import register_pipeline

    register_pipeline()


# the packages whose imports the finder watches: a part imports modules of both
WATCHED = ("transformers", "unip_hf")

# part name -> (the transformers module whose import triggers it, what it does), in the order `register_auto_classes`
# runs them
PARTS: dict[str, tuple[str, Callable[[], None]]] = {
    "configs": ("transformers.models.auto.configuration_auto", _register_configs),
    "models": ("transformers.models.auto.modeling_auto", _register_models),
    "image processors": ("transformers.models.auto.image_processing_auto", _register_image_processors),
    "pipeline": ("transformers.pipelines", _register_pipeline),
}


def _run(name: str) -> None:
    if name not in _done:
        _done.add(name)  # first, so that a part importing another part's trigger does not run itself again
        try:
            PARTS[name][1]()
        except BaseException:
            _done.discard(name)
            raise


def register_auto_classes() -> None:
    """Register every UNIP class with the transformers Auto classes and add the "infrared-image-segmentation"
    pipeline task (`"image-segmentation"` is left as is), now. Safe to call again."""
    for name in PARTS:
        _run(name)
    _uninstall()


def _initializing(module) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(spec is not None and getattr(spec, "_initializing", False))


def _watched(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in WATCHED)


def _busy(executed: str | None) -> bool:
    """Whether a transformers or unip_hf module other than `executed` is executing its own import right now (the
    import system marks its spec `_initializing` until `exec_module` returns)."""
    return any(
        _watched(name) and name != executed and _initializing(module) for name, module in list(sys.modules.items())
    )


def _loaded(module_name: str, executed: str | None) -> bool:
    module = sys.modules.get(module_name)
    return module is not None and (module_name == executed or not _initializing(module))


def run_ready_parts(executed: str | None = None) -> None:
    """Run each waiting part whose trigger module is loaded, unless a transformers or unip_hf module is mid-import. `executed`:
    a module whose `exec_module` has just finished (still marked `_initializing` until it returns), counted as
    loaded."""
    waiting = [name for name in PARTS if name not in _done and _loaded(PARTS[name][0], executed)]
    if waiting and not _busy(executed):
        for name in waiting:
            _run(name)
    if len(_done) == len(PARTS):
        _uninstall()


class _AfterWatchedImport:
    """A `sys.meta_path` finder that finds nothing itself: for a `transformers` or `unip_hf` module it asks the
    finders after it for the spec and makes that spec's loader call `run_ready_parts()` once the module has
    executed."""

    def find_spec(self, fullname: str, path=None, target=None):
        if not _watched(fullname):
            return None
        position = sys.meta_path.index(self) if self in sys.meta_path else -1
        for finder in sys.meta_path[position + 1:]:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is not None and not isinstance(loader, type) and "exec_module" not in getattr(loader, "__dict__", {"exec_module": None}):
            original = loader.exec_module

            def exec_module(module):
                try:
                    original(module)
                finally:
                    del loader.exec_module  # the loader's own method again
                try:
                    run_ready_parts(fullname)
                except Exception as error:  # never fail the user's import of `fullname` for it: say so, retry later
                    warnings.warn(f"unip_hf could not register its classes with transformers yet ({error!r}); "
                                  f"call unip_hf.register_auto_classes() to see the whole error", stacklevel=2)

            try:
                loader.exec_module = exec_module
            except (AttributeError, TypeError):  # a loader that takes no attributes: leave it alone
                pass
        return spec


_finder = _AfterWatchedImport()


def install() -> None:
    """Run the parts whose trigger is already imported and watch transformers imports for the others (called from
    `unip_hf/__init__.py`, so the package itself still counts as importing: it is exempt from the busy check)."""
    if len(_done) < len(PARTS) and _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    run_ready_parts("unip_hf")


def _uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def is_registered() -> bool:
    """Whether every part has run."""
    return len(_done) == len(PARTS)


__all__ = ["register_auto_classes"]
