"""core.models.convert / ``cdp convert wrn``: a WRN state dict in the TRADES / RobustBench layout becomes a
classifier directory that computes the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.cli import main
from core.models import load_classifier


class _Basic(nn.Module):
    """The TRADES / RobustBench ``BasicBlock`` (pre-activation, ReLU), written from its published layout."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.equal else self.convShortcut(pre))


class _Group(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[_Basic(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class _ReferenceWRN(nn.Module):
    def __init__(self, depth: int = 16, widen: int = 2, classes: int = 10) -> None:
        super().__init__()
        n, w = (depth - 4) // 6, [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, w[0], 3, padding=1, bias=False)
        self.block1, self.sub_block1 = _Group(n, w[0], w[1], 1), _Group(n, w[0], w[1], 1)  # TRADES' extra
        self.block2, self.block3 = _Group(n, w[1], w[2], 2), _Group(n, w[2], w[3], 2)
        self.bn1, self.fc = nn.BatchNorm2d(w[3]), nn.Linear(w[3], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.block3(self.block2(self.block1(self.conv1(x))))))
        return self.fc(F.avg_pool2d(h, 8).flatten(1))


@pytest.fixture
def reference() -> _ReferenceWRN:
    torch.manual_seed(0)
    model = _ReferenceWRN()
    for module in model.modules():  # non-trivial BatchNorm statistics, so a mixed-up key shows
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def test_a_robustbench_style_wrn_converts_to_the_same_logits(reference: _ReferenceWRN, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "model.pt"  # as saved from nn.DataParallel, wrapped in {"state_dict": ...}
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, source)
    assert main(["convert", "wrn", str(source), "--out", str(tmp_path / "wrn")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["depth"], printed["widen_factor"], printed["activation"]) == (16, 2, "relu")
    converted = load_classifier(tmp_path / "wrn")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(converted(x), reference(x), atol=1e-5)


def test_deepminds_layout_is_refused_not_converted(tmp_path: Path) -> None:
    source = tmp_path / "dm.pt"
    torch.save({"init_conv.weight": torch.zeros(16, 3, 3, 3), "logits.weight": torch.zeros(10, 64)}, source)
    with pytest.raises(SystemExit):
        main(["convert", "wrn", str(source), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
