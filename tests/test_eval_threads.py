"""eval decodes with one intra-op thread by default (overridable), and restores torch's setting."""

import pytest
import torch

from dllm_kernels.addition import evaluate as ev
from dllm_kernels.addition.task import AdditionTask, build_tokenizer
from dllm_kernels.models import DiffusionLM, tiny


class _Seen(Exception):
    pass


@pytest.mark.parametrize("threads, want", [(ev.DEFAULT_THREADS, 1), (3, 3), (None, "unchanged")])
def test_evaluate_decodes_with_the_requested_threads(monkeypatch, threads, want):
    seen = []

    def fake_generate(*args, **kw):
        seen.append(torch.get_num_threads())
        raise _Seen

    monkeypatch.setattr(ev, "generate", fake_generate)
    task = AdditionTask()
    model = DiffusionLM(tiny(vocab_size=16))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(_Seen):
            ev.sweep({"m": model}, task, task.heldout(2, seed=0), build_tokenizer(), {"vanilla": [{}]}, threads=threads)
        assert seen == [2 if want == "unchanged" else want]
        assert torch.get_num_threads() == 2  # restored, even after an error
    finally:
        torch.set_num_threads(before)


def test_threads_must_be_positive():
    with pytest.raises(ValueError, match="threads"):
        with ev.intra_op_threads(0):
            pass
