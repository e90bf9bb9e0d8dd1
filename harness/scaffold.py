"""``attnbench new-backend NAME [DIR]``: write a complete backend plugin package that passes the kit.

The package (``attnbench-NAME``, import name ``attnbench_NAME``) holds:

* ``pyproject.toml`` — setuptools build backend, a dependency on attnbench, the entry point in the group
  ``attnbench.plugins`` and a ``test`` extra with pytest;
* ``attnbench_NAME/__init__.py`` — the backend: a :class:`harness.Backend` subclass with the contract's
  docstring skeleton and a working attention (dense softmax attention written out in torch, to replace),
  and the ``register_backends`` hook;
* ``tests/test_conformance.py`` — :func:`harness.testing.parametrize_with_checks` over the backend;
* ``README.md`` — install, test, run, publish.

Installed with ``pip install -e DIR`` it is listed by ``attnbench backends``, passes ``pytest DIR`` unchanged
and runs with ``attnbench run -b NAME``.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from .errors import UserError
from .hookspecs import ENTRY_POINT_GROUP

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

_PYPROJECT = string.Template('''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$name: an attention backend for attnbench"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["attnbench"]

[project.optional-dependencies]
test = ["pytest>=8"]

# attnbench finds the backend through this entry point (the name is the plugin's name).
[project.entry-points."$group"]
$name = "$module"

[tool.setuptools]
packages = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
''')

_MODULE = string.Template('''\
"""$name: an attention backend for attnbench.

Registered through the entry point in ``pyproject.toml``; ``attnbench backends`` lists it and
``attnbench run -b $name`` measures it. The rules every backend follows are those of
:class:`harness.Backend`; ``pytest`` runs attnbench's conformance kit (``harness.testing``) on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from harness import Backend, Param, hookimpl

if TYPE_CHECKING:  # torch is imported inside methods: ``attnbench backends`` lists plugins without it
    import torch


class $cls(Backend):
    """$name attention.

    Replace this docstring with what the backend computes and where it comes from (paper, library).
    """

    name = "$name"
    description = "$name attention (dense softmax attention until you change it)"
    #: Parameters users set in a spec, ``$name:causal=true``; validated values arrive in ``self.values``.
    params = (Param("causal", bool, False, "each token attends only to itself and earlier tokens"),)
    #: The padding mask ``attention`` receives: ``"bool"`` (True = attend) or ``"additive"`` (0 / dtype min).
    mask_kind = "bool"
    #: q/k/v dtypes ``attention`` accepts (the harness refuses others before calling it); the output keeps it.
    dtypes = ("float32", "float64", "bfloat16", "float16")
    #: Device types ``attention`` runs on; on CUDA it must allocate on ``query.device``.
    devices = ("cpu", "cuda")

    def check_values(self) -> None:
        """Refuse combinations of ``self.values`` that cannot apply, with a ParamError that says how to
        fix the spec (single values are already checked against each ``Param``), e.g.
        ``raise ParamError(f"{self.name}: block_size must divide 512, e.g. '{self.name}:block_size=64'")``."""

    @classmethod
    def unavailable_reason(cls, values: dict[str, Any] | None = None) -> str | None:
        """Why this backend cannot run on this machine (one line: what is missing, how to get it), or None.
        Cheap; never raises. ``values`` is a configuration's ``self.values`` (None: the backend as a whole)."""
        return None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Whole-model transform before evaluation (a private float32 CPU copy in eval mode): return the
        model to evaluate with its outputs' shapes unchanged, or the model itself."""
        return model

    def attention(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention of one layer.

        :param module: the calling self-attention module (``scaling``, ``is_causal``, ``config``).
        :param query: ``(batch, heads, q_len, head_dim)``; ``key``, ``value``: ``(batch, heads, k_len,
            head_dim)``; one of ``dtypes``, possibly non-contiguous views.
        :param attention_mask: ``None`` or ``(batch, 1, q_len, k_len)`` of ``mask_kind`` (bool: True =
            attend). Not only padding: rows may differ (a sliding window), and every row must be honoured.
        :param scaling: softmax scale; None means ``head_dim ** -0.5``. Scores are ``(q · k) · scaling``.
        :param dropout: attention dropout; an inference-only backend refuses a non-zero value.
        :returns: ``(output, None)`` with output ``(batch, q_len, heads, head_dim)`` in the query's dtype.
        :raises NotImplementedError: for dropout > 0.
        """
        import torch

        if dropout:
            raise NotImplementedError(f"{self.name} is inference-only: dropout must be 0, got {dropout}")
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        scores = torch.matmul(query, key.transpose(-1, -2)) * scale          # (batch, heads, q_len, k_len)
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        if self.values["causal"]:
            q_len, k_len = scores.shape[-2:]
            later = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).triu(1)
            scores = scores.masked_fill(later, float("-inf"))
        weights = torch.softmax(scores, dim=-1)                              # subtracts each row's maximum
        output = torch.matmul(weights, value)                                # (batch, heads, q_len, head_dim)
        return output.transpose(1, 2), None                                  # (batch, q_len, heads, head_dim)


@hookimpl
def register_backends(register: Callable[[type[Backend]], None]) -> None:
    register($cls)
''')

_TEST = string.Template('''\
"""attnbench's conformance kit on $name: one test per rule of the backend contract.

A failing test's id names the rule (``$name-padding``) and its message says what was found.
Checks the installed package, through its entry point: ``pip install -e .`` first.
"""

from harness.testing import parametrize_with_checks


@parametrize_with_checks(["$name", "$name:causal=true"])
def test_conformance(backend, check):
    check(backend)
''')

_README = string.Template('''\
# $dist

`$name`: an attention backend for [attnbench](https://pypi.org/project/attnbench/).

```bash
pip install -e .                      # into the environment that has attnbench
attnbench backends                    # lists $name with this package's name and version
pytest                                # attnbench's conformance kit: one test per rule
attnbench run -b dense -b $name --tasks mrpc --limit 16
```

The backend is `$module/__init__.py`. Parameters go into a spec: `-b $name:causal=true`.

Publish: set the version in `pyproject.toml`, then `python -m build` and `twine upload dist/*`.
''')


def package_names(name: str) -> dict[str, str]:
    """The names a package for backend ``name`` uses: ``dist`` (``attnbench-relu-attention``), ``module``
    (``attnbench_relu_attention``) and ``cls`` (``ReluAttention``).

    :raises UserError: ``name`` is not lower-case letters, digits and single ``-`` starting with a letter.
    """
    if not _NAME.match(name):
        raise UserError(f"backend name {name!r}: use lower-case letters, digits and single '-', starting with a "
                        "letter, e.g. relu-attention")
    cls = "".join(part.capitalize() for part in name.split("-"))
    return {"name": name, "dist": f"attnbench-{name}", "module": "attnbench_" + name.replace("-", "_"),
            "cls": cls if cls[0].isalpha() else f"Backend{cls}", "group": ENTRY_POINT_GROUP}


def new_backend(name: str, directory: str | Path | None = None) -> list[Path]:
    """Write the plugin package for backend ``name`` into ``directory`` (default ``./attnbench-NAME``).

    :returns: the files written, relative paths under ``directory`` first to last.
    :raises UserError: a bad name, or a ``directory`` that exists and is not empty (nothing is overwritten).
    """
    names = package_names(name)
    root = Path(directory) if directory is not None else Path(names["dist"])
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{root} already exists and is not an empty directory; name a new directory, e.g. "
                        f"attnbench new-backend {name} {names['dist']}")
    files = {"pyproject.toml": _PYPROJECT, "README.md": _README,
             f"{names['module']}/__init__.py": _MODULE, "tests/test_conformance.py": _TEST}
    written = []
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.substitute(names), encoding="utf-8")
        written.append(path)
    return written
