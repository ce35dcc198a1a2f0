"""scripts/cuda_check.py, CPU against CPU (the suite has no GPU): its comparisons run and can fail."""

import pytest
import torch

from conftest import load_script

cuda_check = load_script("cuda_check")


def test_every_algorithm_agrees_with_itself_and_the_commands_run(tmp_path):
    cuda_check.main(["--device", "cpu", "--algos", "maml,protonet", "--runs", "--out", str(tmp_path)])
    lines = (tmp_path / "cuda_check.txt").read_text().splitlines()
    assert sum("relative difference 0.0e+00; adapted logits 0.0e+00" in line for line in lines) == 2
    assert any(line.startswith("metarun-eval on cpu: test accuracy") for line in lines)
    assert any(line.startswith("metarun-predict with the cpu-trained run") for line in lines)


def test_a_difference_beyond_the_tolerance_stops_it(monkeypatch, tmp_path):
    real = cuda_check.outcome
    calls = []

    def outcome(algo, device, extra):  # every second call stands for the other device: one gradient is off
        result = real(algo, device, extra)
        calls.append(algo)
        if len(calls) % 2 == 0:
            name = next(iter(result["grads"]))
            result["grads"][name] = result["grads"][name] + 1e-2 * result["grads"][name].abs().max()
        return result

    monkeypatch.setattr(cuda_check, "outcome", outcome)
    lines, failed = cuda_check.check_gradients(["maml"], torch.device("cpu"), tolerance=1e-4)
    assert len(lines) == 1
    assert failed == ["maml on cpu (tasks one by one) differs from the CPU beyond --tolerance 0.0001"]
    with pytest.raises(SystemExit, match="differs from the CPU"):  # the script exits non-zero, its file written
        cuda_check.main(["--device", "cpu", "--algos", "maml", "--out", str(tmp_path)])
    assert "differs from the CPU" in (tmp_path / "cuda_check.txt").read_text()
