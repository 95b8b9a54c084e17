"""Every checkpoint-loading error names its problem, and a pickle payload never runs."""

from __future__ import annotations

import pickle

import pytest
import torch

from common.errors import UserError
from models.DistillationIQA import DistillationIQANet
from tests.test_model import released_state_dict


@pytest.fixture(scope="module")
def net():
    return DistillationIQANet(pretrained=False)


def test_missing_file(net, tmp_path):
    with pytest.raises(UserError, match=r"checkpoint not found: .*nowhere\.pth"):
        net.load_checkpoint(tmp_path / "nowhere.pth")


def test_file_that_is_not_a_checkpoint(net, tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(UserError, match=r"notes\.pth is not a checkpoint"):
        net.load_checkpoint(path)


def test_checkpoint_of_other_objects(net, tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="is not a checkpoint"):
        net.load_checkpoint(path)


def test_missing_keys_are_listed(net):
    state = released_state_dict()
    del state["regressor.l2.weight"], state["lda3_process.0.bias"]
    with pytest.raises(UserError, match=r"missing keys \[lda3_process\.0\.bias, regressor\.l2\.weight\]"):
        net.load_checkpoint(state)


def test_unexpected_keys_are_listed(net):
    state = released_state_dict()
    state["regressor.l3.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"unexpected keys \[regressor\.l3\.weight\]"):
        net.load_checkpoint(state)


def test_unused_keys_are_dropped_by_name_only(net):
    state = released_state_dict()
    assert "feature_extractor.lda4_fc.weight" in state and "regressor.relu1.weight" in state
    net.load_checkpoint(state)  # the 14 unused keys are fine
    state["feature_extractor.lda5_fc.weight"] = torch.zeros(1)  # but not a look-alike
    with pytest.raises(UserError, match="lda5_fc"):
        net.load_checkpoint(state)


def test_other_self_patch_num_names_the_needed_value(tmp_path):
    five = DistillationIQANet(self_patch_num=5, MLP_depth=1, distillation_layer=1, pretrained=False)
    path = tmp_path / "five.pth"
    torch.save(five.state_dict(), path)
    ten = DistillationIQANet(self_patch_num=10, MLP_depth=1, distillation_layer=1, pretrained=False)
    with pytest.raises(UserError, match=r"self_patch_num=5.*--self_patch_num 5"):
        ten.load_checkpoint(path)


def test_other_depth_is_reported_as_key_mismatch(tmp_path):
    shallow = DistillationIQANet(self_patch_num=1, MLP_depth=1, distillation_layer=1, pretrained=False)
    deep = DistillationIQANet(self_patch_num=1, MLP_depth=2, distillation_layer=1, pretrained=False)
    expected = r"missing keys \[MLP_encoder_diff\.mlp\.4\.0\..*unexpected keys \[MLP_encoder_diff\.mlp\.4\.bias"
    with pytest.raises(UserError, match=expected):
        deep.load_checkpoint(shallow.state_dict())


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_never_runs(net, tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": _Payload(marker)}, handle)
    with pytest.raises(UserError, match="not a checkpoint that can be loaded safely"):
        net.load_checkpoint(path)
    assert not marker.exists()
    # the same payload inside a torch zip file
    path2 = tmp_path / "evil2.pth"
    torch.save({"model": _Payload(marker)}, path2)
    marker.unlink(missing_ok=True)
    with pytest.raises(UserError, match="weights_only"):
        net.load_checkpoint(path2)
    assert not marker.exists()
