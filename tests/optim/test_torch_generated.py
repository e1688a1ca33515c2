"""The named torch optimizers are generated from their factories, and their state says what it is.

* signature, docstring ``Parameters`` and default ``lr`` come from the factory and
  ``DEFAULT_LR`` at import, so they cannot drift when a factory gains or changes an argument;
* :class:`PreconditionedOptimizer` takes any factory directly (by name or as a callable);
* every stored state records its dataclass (``"state_type"``) and how many parameters it
  covers (``"spans"``), so ``load_state_dict`` needs no ``init`` (which allocates the
  ``d x d`` matrix of FullMatrixAdaGrad) to rebuild it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import pickle
import re

import pytest

torch = pytest.importorskip(
    "torch", reason="torch not installed: pip install 'lowrank-precond[torch]'"
)

from lowrank_precond import preconditioners as pc  # noqa: E402
from lowrank_precond.preconditioners.defaults import DEFAULT_LR  # noqa: E402
from lowrank_precond.torch import (  # noqa: E402
    ASGO,
    AdaDiag,
    AdaGrad,
    AdaGram,
    Adam,
    AdamGram,
    FullMatrixAdaGrad,
    PreconditionedOptimizer,
    SketchedAdaGrad,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = [AdaGram, AdamGram, SketchedAdaGrad, FullMatrixAdaGrad, AdaDiag, ASGO, AdaGrad, Adam]
OWN = {"params", "lr", "weight_decay", "maximize"}


def _required(cls) -> dict:
    """Values for the factory arguments without a default (AdamGram's ``rank``)."""
    return {
        name: None
        for name, p in inspect.signature(cls).parameters.items()
        if p.default is inspect.Parameter.empty and name != "params"
    }


def _parameters_section(doc: str) -> dict[str, str]:
    """``name -> entry`` of the numpydoc ``Parameters`` section of a docstring."""
    doc = inspect.cleandoc(doc)
    body = re.split(r"^Parameters\n-+\n", doc, flags=re.M)[1]
    body = re.split(r"^\S[^\n]*\n-{3,}\n", body, flags=re.M)[0]
    blocks: list[list[str]] = []
    for line in body.rstrip().splitlines():
        if line and not line[0].isspace():
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    entries: dict[str, str] = {}
    for block in blocks:
        for name in block[0].split(" : ")[0].split(","):
            entries[name.strip()] = "\n".join(block).rstrip()
    return entries


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_signature_is_the_factorys_plus_the_optimizers_own(cls):
    factory = pc.get(cls.factory)
    fsig = dict(inspect.signature(factory).parameters)
    csig = inspect.signature(cls).parameters
    # the row shards are the optimizer's to build: the class takes the process group instead
    sharded = fsig.pop("shards", None) is not None
    assert list(csig)[:2] == ["params", "lr"]
    for name, p in fsig.items():
        assert csig[name].default == p.default, name
        assert csig[name].annotation == p.annotation, name
        assert csig[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    own = OWN | ({"per_parameter"} if cls.layout == "vector" else set())
    own |= {"process_group", "shard_state"} if sharded else set()
    assert set(csig) - set(fsig) == own
    # a misspelt argument fails like any Python call
    with pytest.raises(TypeError, match="unexpected keyword argument 'rankk'"):
        cls([torch.nn.Parameter(torch.zeros(2))], rankk=3, **_required(cls))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_default_lr_is_the_librarys_table(cls):
    """One source of default learning rates: ``DEFAULT_LR`` (the classes hard-coded
    1e-2/1e-3 before)."""
    assert inspect.signature(cls).parameters["lr"].default == DEFAULT_LR[cls.factory]
    opt = cls([torch.nn.Parameter(torch.zeros(3))], **_required(cls))
    assert opt.param_groups[0]["lr"] == DEFAULT_LR[cls.factory]
    assert opt.defaults["lr"] == DEFAULT_LR[cls.factory]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_docstring_documents_each_argument_in_the_factorys_words(cls):
    """Each argument has its own ``Parameters`` entry; a factory argument's entry is the
    factory's own text (the classes said "As in ..." for a list of names before)."""
    ours = _parameters_section(cls.__doc__)
    theirs = _parameters_section(pc.get(cls.factory).__doc__)
    for name in inspect.signature(cls).parameters:
        assert name in ours, f"{cls.__name__}: {name} is not documented"
        if name in theirs and name != "nonfinite":  # nonfinite: the optimizer's own rule
            assert ours[name] == theirs[name], name
    assert "DEFAULT_LR" in ours["lr"]
    assert "group" in ours["nonfinite"]


def test_state_records_its_type_and_how_many_parameters_it_spans():
    W = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    opt = AdaGram([W, b], lr=0.1, rank=2)
    W.grad, b.grad = torch.ones(3, 2, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    opt.step()
    assert set(opt.state) == {W}
    assert opt.state[W]["state_type"] == "AdaGramState"
    assert opt.state[W]["spans"] == 2  # one preconditioner for the whole group, kept at W

    opt = AdaGram([W, b], lr=0.1, rank=2, per_parameter=True)
    opt.step()
    assert {opt.state[p]["spans"] for p in (W, b)} == {1}
    opt = ASGO([W, b], betas=(0.5, None))
    opt.step()
    assert opt.state[W]["state_type"] == "ASGOMomentumState"
    # the state dict carries both entries through torch.save / weights_only loading
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["state"][0]["state_type"] == "ASGOMomentumState"
    assert saved["state"][0]["spans"] == 1


def _counting_full_matrix(calls):
    def factory(eps=1e-8, max_dim=4096, nonfinite="raise"):
        pre = pc.full_matrix_adagrad(eps=eps, max_dim=max_dim, nonfinite=nonfinite)

        def init(x):
            if x.device.type != "meta":  # a meta tensor allocates nothing
                calls.append(tuple(x.shape))
            return pre.init(x)

        return dataclasses.replace(pre, init=init)

    return factory


def test_load_state_dict_does_not_call_init():
    """Loading used to call ``init`` on the real parameters just to learn the state's class,
    allocating FullMatrixAdaGrad's ``d x d`` Gram matrix for nothing."""
    calls: list = []

    class Counting(PreconditionedOptimizer):
        factory = staticmethod(_counting_full_matrix(calls))
        layout = "vector"

    def run(opt, params, steps):
        for t in range(steps):
            for k, p in enumerate(params):
                p.grad = torch.full_like(p, 0.1 * (t + k + 1))
            opt.step()

    a = [torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(4))]
    opt = Counting(a, lr=0.1)
    run(opt, a, 3)
    assert calls == [(16,)]  # the first step builds the state, once

    calls.clear()
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt2 = Counting(b, lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    run(opt2, b, 2)
    run(opt, a, 2)
    assert calls == []
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_generic_optimizer_takes_a_factory_by_name_or_callable():
    def params():
        gen = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(3, 4, generator=gen, dtype=torch.float64))]

    def run(opt, ps):
        for t in range(4):
            ps[0].grad = torch.full_like(ps[0], float(t + 1)) + ps[0].detach()
            opt.step()
        return ps[0].detach()

    p, q = params(), params()
    named = run(ASGO(p, lr=0.05, side="right"), p)
    by_name = PreconditionedOptimizer(q, "asgo", lr=0.05, side="right")
    assert by_name.layout == "matrix"
    assert torch.equal(run(by_name, q), named)
    r = params()
    by_callable = PreconditionedOptimizer(r, pc.asgo, lr=0.05, layout="matrix", side="right")
    assert torch.equal(run(by_callable, r), named)
    # the default lr of a named factory; none for a callable
    assert PreconditionedOptimizer(params(), "adam").param_groups[0]["lr"] == DEFAULT_LR["adam"]
    with pytest.raises(TypeError, match="lr"):
        PreconditionedOptimizer(params(), pc.adam)
    with pytest.raises(TypeError, match="factory"):
        Adam(params(), factory="adagrad")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="bound to 'adam'"):
        PreconditionedOptimizer.__init__(Adam.__new__(Adam), params(), "adagrad")
    with pytest.raises(ValueError, match="layout"):
        PreconditionedOptimizer(params(), "adam", layout="diagonal")


def test_copies_and_pickles_keep_the_factory():
    x = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = PreconditionedOptimizer([x], "adagrad", lr=0.1)
    x.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.factory == "adagrad" and clone.layout == "elementwise"
        (y,) = clone.param_groups[0]["params"]
        y.grad = torch.ones(3, dtype=torch.float64)
        clone.step()
        assert clone.state[y]["t"] == 2
