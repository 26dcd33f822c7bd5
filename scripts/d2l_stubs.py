"""Stub modules so that `from d2l import torch as d2l` (d2l==0.17.6) imports
without its heavy, unused dependencies.

d2l/torch.py imports torchvision, PIL, pandas, requests, IPython, matplotlib
and matplotlib_inline at module level, but none of the functions used for the
NLI-BERT fixtures (Vocab, tokenize, get_tokens_and_segments, BERTModel,
train_batch_ch13, evaluate_accuracy_gpu, accuracy) touch them. Installing
torchvision could pull in a different torch, so every one of these is replaced
by an empty module (with a proper `__spec__`) in `sys.modules` *before*
d2l is imported. They are always stubbed (even if the real package is
installed) so that the fixture run does not depend on what else is installed.

Usage:
    import d2l_stubs; d2l_stubs.install()
    from d2l import torch as d2l
"""

import importlib.machinery
import sys
import types

# module name -> attributes that d2l pulls out with `from X import Y`
_STUBS = {
    'torchvision': ['transforms'],
    'torchvision.transforms': [],
    'PIL': ['Image'],
    'PIL.Image': [],
    'pandas': [],
    'requests': [],
    'IPython': ['display'],
    'IPython.display': [],
    'matplotlib': ['pyplot'],
    'matplotlib.pyplot': [],
    'matplotlib_inline': ['backend_inline'],
    'matplotlib_inline.backend_inline': [],
}


def _make(name, is_pkg):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None,
                                                  is_package=is_pkg)
    if is_pkg:
        mod.__path__ = []
    mod.__file__ = None
    mod.__d2l_fixture_stub__ = True
    return mod


def install():
    """Insert the stub modules into sys.modules (idempotent)."""
    for name, children in _STUBS.items():
        if name not in sys.modules or not getattr(
                sys.modules[name], '__d2l_fixture_stub__', False):
            sys.modules[name] = _make(name, bool(children))
    for name, children in _STUBS.items():
        for child in children:
            setattr(sys.modules[name], child,
                    sys.modules[name + '.' + child])
