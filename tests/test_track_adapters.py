"""Adapters of la.track: the Hugging Face Trainer callback records the same table as la.train
(skipped when transformers/accelerate are not installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lossatlas as la

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


def _tiny_bert(seed=0):
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "eager"  # fused attention kernels have no double backward
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(cfg)


def test_trainer_callback_records_exact_sharpness_at_each_step(tmp_path):
    from lossatlas.track.huggingface import TrackerCallback

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (32, 6), generator=g)
    labels = ids[:, 0] % 3
    data = {"input_ids": ids, "labels": labels}

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": labels[i]}

    model = _tiny_bert()
    snapshots = {}

    class Snap(transformers.TrainerCallback):  # weights at every step, to check against
        def on_step_end(self, args, state, control, model=None, **kw):
            snapshots[state.global_step] = {k: v.detach().clone()
                                            for k, v in model.state_dict().items()}

    tracker = la.track.Sharpness(every=2, data=data, loss="model", tol=1e-6)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=8, num_train_epochs=1,
        learning_rate=1e-3, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DS(),
                                   callbacks=[TrackerCallback(tracker), Snap()])
    trainer.train()
    tab = la.load_run(tmp_path / "hf" / "lossatlas").track("sharpness")
    assert tab["step"].tolist() == [0, 2, 4]
    assert np.isfinite(tab["precond_lambda_max"][1:]).all()  # AdamW, unwrapped from Accelerate
    check = _tiny_bert()
    check.load_state_dict(snapshots[4])
    obj = la.Objective(check, data, loss="model")
    fresh = la.hessian.eigs(obj, k=1, tol=1e-8, seed=5).top
    assert np.isclose(tab["lambda_max"][2], fresh, rtol=1e-4)
