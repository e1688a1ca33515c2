"""state_dict / load_state_dict: a run continued from a checkpoint is bit-identical.

Every class, float32 and float64 models; the checkpoint goes through ``torch.save`` /
``torch.load(weights_only=True)`` as a user would store it. float32 models with AdaGram keep
a float64 factor, which ``torch.optim.Optimizer.load_state_dict`` alone would round.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch not installed: pip install 'lowrank-precond[torch]'"
)

from lowrank_precond.torch import (  # noqa: E402
    ASGO,
    AdaDiag,
    AdaGrad,
    AdaGram,
    Adam,
    AdamGram,
    FullMatrixAdaGrad,
    SketchedAdaGrad,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CASES = {
    "adagram-ksl": (AdaGram, {"lr": 0.05, "rank": 3}),
    "adagram-svd-symmetric": (
        AdaGram,
        {"lr": 0.05, "rank": 3, "integrator": "truncated_svd", "direction": "symmetric"},
    ),
    "adagram-exact-per-parameter": (AdaGram, {"lr": 0.05, "per_parameter": True}),
    "adamgram": (AdamGram, {"lr": 0.02, "rank": None}),
    "adamgram-no-momentum": (AdamGram, {"lr": 0.02, "rank": 3, "betas": (0.0, 0.0)}),
    "sketched": (SketchedAdaGrad, {"lr": 0.05, "rank": 3}),
    "sketched-momentum": (SketchedAdaGrad, {"lr": 0.05, "rank": 3, "betas": (0.9, 0.0)}),
    "adadiag": (AdaDiag, {"lr": 0.02, "update_freq": 4}),
    "adadiag++": (AdaDiag, {"lr": 0.02, "update_freq": 4, "two_sided": True}),
    "asgo-momentum": (ASGO, {"lr": 0.05, "betas": (0.5, None), "update_freq": 3}),
    "full-matrix": (FullMatrixAdaGrad, {"lr": 0.05, "weight_decay": 0.01}),
    "adagrad": (AdaGrad, {"lr": 0.05}),
    "adam": (Adam, {"lr": 0.02, "weight_decay": 0.1}),
}


def _setup(cls, kwargs, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(
        dtype
    )
    params = list(model.parameters())
    # two groups, the second with its own lr
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": kwargs["lr"] / 2}], **kwargs)
    return model, opt


def _data(dtype):
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 5, generator=gen).to(dtype), torch.randn(16, 2, generator=gen).to(dtype))
        for _ in range(20)
    ]


def _steps(model, opt, batches):
    for X, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        opt.step()


def _assert_states_identical(opt1, opt2):
    s1, s2 = opt1.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and s1
    for k in s1:
        assert s1[k].keys() == s2[k].keys()
        for name, v in s1[k].items():
            w = s2[k][name]
            if torch.is_tensor(v):
                assert v.dtype == w.dtype and v.shape == w.shape, name
                assert torch.equal(v, w), name
            else:
                assert type(v) is type(w) and v == w, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpoint_continues_bit_identically(case, dtype):
    cls, kwargs = CASES[case]
    batches = _data(dtype)
    model, opt = _setup(cls, kwargs, dtype)
    _steps(model, opt, batches[:10])

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    _steps(model, opt, batches[10:])

    model2, opt2 = _setup(cls, kwargs, dtype)
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    assert opt2.param_groups[1]["lr"] == kwargs["lr"] / 2
    _steps(model2, opt2, batches[10:])

    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    _assert_states_identical(opt, opt2)


def test_float64_factor_of_float32_params_survives_loading():
    batches = _data(torch.float32)
    model, opt = _setup(AdaGram, {"lr": 0.05, "rank": 3}, torch.float32)
    _steps(model, opt, batches[:5])
    first = model[0].weight
    assert opt.state[first]["U"].dtype == torch.float64  # factor_dtype=None: float64 factor
    saved = opt.state_dict()

    model2, opt2 = _setup(AdaGram, {"lr": 0.05, "rank": 3}, torch.float32)
    opt2.load_state_dict(saved)
    loaded = opt2.state[model2[0].weight]
    assert loaded["U"].dtype == torch.float64
    assert torch.equal(loaded["U"], saved["state"][0]["U"])
    # loading copies: the checkpoint does not share memory with the new optimizer
    assert loaded["U"].data_ptr() != saved["state"][0]["U"].data_ptr()

    # what torch.optim's own load_state_dict would do: round the factor to float32
    model3, opt3 = _setup(AdaGram, {"lr": 0.05, "rank": 3}, torch.float32)
    torch.optim.Optimizer.load_state_dict(opt3, saved)
    assert opt3.state[model3[0].weight]["U"].dtype == torch.float32


def test_state_dict_is_a_snapshot_of_the_step():
    """The factories never write into state arrays, so a state_dict taken earlier stays valid."""
    batches = _data(torch.float64)
    model, opt = _setup(AdaGram, {"lr": 0.05, "rank": 3}, torch.float64)
    _steps(model, opt, batches[:4])
    saved = opt.state_dict()
    before = {
        k: {n: (v.clone() if torch.is_tensor(v) else v) for n, v in s.items()}
        for k, s in saved["state"].items()
    }
    _steps(model, opt, batches[4:8])
    for k, s in saved["state"].items():
        for n, v in s.items():
            assert torch.equal(v, before[k][n]) if torch.is_tensor(v) else v == before[k][n]


@pytest.mark.gpu
def test_checkpoint_moves_to_cuda_and_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("torch-cuda: no CUDA device (torch.cuda.is_available() is False)")
    batches = _data(torch.float64)
    cases = [
        (AdaGram, {"lr": 0.05, "rank": 3}),
        (SketchedAdaGrad, {"lr": 0.05, "rank": 3}),
        (ASGO, {"lr": 0.05}),
        (AdaDiag, {"lr": 0.02, "update_freq": 4}),
    ]
    for cls, kwargs in cases:
        model, opt = _setup(cls, kwargs, torch.float64)
        _steps(model, opt, batches[:5])
        saved = opt.state_dict()
        model_gpu, opt_gpu = _setup(cls, kwargs, torch.float64)
        model_gpu.load_state_dict(model.state_dict())
        model_gpu.cuda()
        opt_gpu.load_state_dict(saved)
        for fields in opt_gpu.state.values():
            assert all(v.is_cuda for v in fields.values() if torch.is_tensor(v))
        _steps(model, opt, batches[5:])
        _steps(model_gpu, opt_gpu, [(X.cuda(), y.cuda()) for X, y in batches[5:]])
        for p, q in zip(model.parameters(), model_gpu.parameters(), strict=True):
            assert torch.allclose(p, q.cpu(), rtol=1e-9, atol=1e-12), cls.__name__


# --------------------------------------------------------------------------- validated loading
def _trained(cls, kwargs, model=None, steps=3):
    torch.manual_seed(0)
    model = model if model is not None else torch.nn.Linear(4, 2)
    opt = cls(model.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(5)
    for _ in range(steps):
        X = torch.randn(8, model.in_features, generator=gen)
        opt.zero_grad()
        model(X).pow(2).mean().backward()
        opt.step()
    return model, opt


def _assert_load_refused(opt, state_dict, match):
    """``load_state_dict`` raises ``ValueError`` at load time and leaves ``opt`` as it was."""
    before_groups = [dict(g) for g in opt.param_groups]
    before_state = dict(opt.state)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(state_dict)
    assert [dict(g) for g in opt.param_groups] == before_groups
    assert dict(opt.state) == before_state


@pytest.mark.parametrize(
    "source",
    [
        lambda ps: Adam(ps, lr=0.01),
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        lambda ps: SketchedAdaGrad(ps, rank=2),
    ],
    ids=["Adam", "torch.optim.Adam", "SketchedAdaGrad"],
)
def test_another_classes_state_dict_is_refused_at_load(source):
    """It loaded, and the next step() died with KeyError: 'rank'."""
    model = torch.nn.Linear(4, 2)
    opt = source(model.parameters())
    model(torch.ones(3, 4)).sum().backward()
    opt.step()
    _, target = _trained(AdaGram, {"rank": 2}, steps=0)
    # whichever comes first: the saved hyper-parameters or the state do not fit AdaGram
    _assert_load_refused(
        target, opt.state_dict(), r"state_dict\['state'\]\[0\].*AdaGram|loaded param group 0"
    )


def test_missing_group_keys_take_the_defaults():
    """An older checkpoint without a key (an argument added since) loads with the default,
    as torch.optim does; before, step() died with KeyError."""
    model, opt = _trained(AdaGram, {"rank": 2, "lr": 0.05})
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        for key in ("integrator", "maximize", "nonfinite", "per_parameter"):
            del group[key]
    model2 = copy.deepcopy(model)
    opt2 = AdaGram(model2.parameters(), rank=2, lr=0.05)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["integrator"] == opt.param_groups[0]["integrator"]
    assert opt2.param_groups[0]["maximize"] is False
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(torch.ones(2, 4)).sum().backward()
        o.step()
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    "cls, kwargs", [(AdaGram, {"rank": 2}), (ASGO, {}), (Adam, {}), (FullMatrixAdaGrad, {})]
)
def test_state_of_another_shape_is_refused_at_load(cls, kwargs):
    """ASGO and Adam loaded it and stepped on (wrong) state; AdaGram failed at the next
    step() naming ``grad``."""
    _, opt = _trained(cls, kwargs, model=torch.nn.Linear(5, 2))
    _, target = _trained(cls, kwargs, model=torch.nn.Linear(4, 3), steps=0)
    _assert_load_refused(target, opt.state_dict(), "another shape")


def test_state_of_a_larger_rank_is_refused_at_load():
    _, opt = _trained(AdaGram, {"rank": 4, "integrator": "truncated_svd"}, steps=6)
    saved = opt.state_dict()
    saved["param_groups"][0]["rank"] = 2  # e.g. a missing key filled with a smaller default
    _, target = _trained(AdaGram, {"rank": 2, "integrator": "truncated_svd"}, steps=0)
    _assert_load_refused(target, saved, "rank=2")


def test_per_parameter_and_group_spanning_states_do_not_mix():
    _, per_param = _trained(AdaGram, {"rank": 2, "per_parameter": True})
    _, spanning = _trained(AdaGram, {"rank": 2}, steps=0)
    saved = per_param.state_dict()
    saved["param_groups"][0]["per_parameter"] = False
    _assert_load_refused(spanning, saved, "spans 1 parameter")

    _, spanning = _trained(AdaGram, {"rank": 2})
    saved = spanning.state_dict()
    saved["param_groups"][0]["per_parameter"] = True
    _, per_param = _trained(AdaGram, {"rank": 2, "per_parameter": True}, steps=0)
    _assert_load_refused(per_param, saved, "spans 2 parameter")


def test_numpy_arrays_in_a_state_dict_are_refused_naming_the_field():
    """torch's loader died inside its own copy (``TypeError: expected a sequence of
    integers``) with no word about which entry."""
    _, opt = _trained(Adam, {})
    saved = opt.state_dict()
    saved["state"][0]["m"] = saved["state"][0]["m"].numpy()
    _, target = _trained(Adam, {}, steps=0)
    _assert_load_refused(target, saved, r"field 'm' is a numpy.ndarray")


def test_a_wrong_state_put_into_the_optimizer_fails_naming_the_field():
    model, opt = _trained(Adam, {})
    model(torch.ones(2, 4)).sum().backward()
    for bad, match in [
        (torch.zeros(3, 3), r"field 'm' has shape \(3, 3\), expected \(2, 4\)"),
        (np.zeros((2, 4), dtype=np.float32), "field 'm' is a numpy.ndarray"),
    ]:
        good = opt.state[model.weight]["m"]
        opt.state[model.weight]["m"] = bad
        before = model.weight.detach().clone()
        with pytest.raises(ValueError, match=match):
            opt.step()
        assert torch.equal(model.weight, before)
        opt.state[model.weight]["m"] = good
    opt.step()


def test_numpy_dtype_hyperparameter_loads_with_weights_only(tmp_path):
    """``factor_dtype=np.float64`` was stored as the NumPy type in param_groups, which
    ``torch.load(weights_only=True)`` refuses to unpickle."""
    model, opt = _trained(AdaGram, {"rank": 2, "factor_dtype": np.float64})
    assert opt.param_groups[0]["factor_dtype"] == "float64"
    extra = torch.nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra], "factor_dtype": np.dtype("float32")})
    assert opt.param_groups[1]["factor_dtype"] == "float32"
    path = tmp_path / "ckpt.pt"
    torch.save(opt.state_dict(), path)
    saved = torch.load(path, weights_only=True)
    model2 = copy.deepcopy(model)
    opt2 = AdaGram(model2.parameters(), rank=2, factor_dtype="float64")
    opt2.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))]})
    opt2.load_state_dict(saved)
    assert opt2.state[model2.weight]["U"].dtype == torch.float64


def test_checkpoints_without_the_state_records_still_load():
    """States saved before ``state_type``/``spans`` existed: the type comes from the group."""
    batches = _data(torch.float64)
    model, opt = _setup(AdaGram, {"lr": 0.05, "rank": 3}, torch.float64)
    _steps(model, opt, batches[:5])
    saved = opt.state_dict()
    for fields in saved["state"].values():
        del fields["state_type"], fields["spans"]
    model2, opt2 = _setup(AdaGram, {"lr": 0.05, "rank": 3}, torch.float64)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(saved)
    _steps(model, opt, batches[5:])
    _steps(model2, opt2, batches[5:])
    _assert_states_identical(opt, opt2)


def test_a_checkpoint_written_before_a_defaulted_field_existed_loads():
    """AdaGram's state gained ``C`` (``U^T V``, carried between symmetric fused steps); a
    checkpoint without it loads, and the run continues to rounding (the next step measures
    ``C`` instead of carrying it)."""
    from lowrank_precond.torch import AdaGram

    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(300, dtype=torch.float64, generator=g) for _ in range(14)]

    def run(opt, x, gs):
        for gr in gs:
            x.grad = gr.clone()
            opt.step()

    x = torch.nn.Parameter(torch.zeros(300, dtype=torch.float64))
    opt = AdaGram([x], lr=0.1, rank=3, eps=1e-3)
    run(opt, x, grads[:9])
    saved = opt.state_dict()
    assert saved["state"][0]["C"].shape == (3, 3)  # carried by the fused steps
    old = {**saved, "state": {0: {k: v for k, v in saved["state"][0].items() if k != "C"}}}
    x2 = torch.nn.Parameter(x.detach().clone())
    opt2 = AdaGram([x2], lr=0.1, rank=3, eps=1e-3)
    opt2.load_state_dict(old)
    assert opt2.state[x2]["C"].shape == (0, 0)  # what init keeps: not known
    run(opt, x, grads[9:])
    run(opt2, x2, grads[9:])
    assert float((x - x2).detach().abs().max()) <= 1e-13
    assert opt2.state[x2]["C"].shape == (3, 3)
