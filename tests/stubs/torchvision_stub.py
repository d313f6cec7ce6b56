"""An inert ``torchvision`` for importing SGLang's dLLM modules on a CPU-only test machine.

SGLang's multimodal configs and transformers' AutoProcessor import ``torchvision``,
``torchvision.transforms`` and ``torchvision.io`` at module level; the dLLM decoding path never
calls them. torchvision's wheels pin a torch build (installing one pulls the CUDA torch), so the
tests install this stub instead: a meta-path finder that answers every ``torchvision.*`` module
with one whose attributes are inert callables. Test setup only (tests/test_sglang.py installs it
when no real torchvision is importable); never shipped in the package.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


class _InertType(type):
    """Class attributes of an inert class are inert classes too (``InterpolationMode.NEAREST``)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert

    def __getitem__(cls, key):
        return _Inert


class _Inert(metaclass=_InertType):
    """Any attribute, call, subscript or subclassing gives another inert object."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert

    def __getitem__(self, key):
        return _Inert()


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0.0+stub"
        return module

    def exec_module(self, module):
        pass


def install() -> bool:
    """Install the stub unless a real torchvision is importable; True if installed."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return False
    sys.meta_path.append(_Finder())
    return True
