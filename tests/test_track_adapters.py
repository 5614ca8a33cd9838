"""Adapters of la.track: the Hugging Face Trainer callback records the same table as la.train
and the Lightning callback the same as la.train (each skipped when its extra is missing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lossatlas as la


def _tiny_bert(seed=0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(cfg)


@pytest.mark.slow
def test_trainer_callback_records_exact_sharpness_at_each_step(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from lossatlas.measurements.track.huggingface import TrackerCallback

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


def test_lightning_callback_records_the_same_table_as_la_train(tmp_path):
    L = pytest.importorskip("lightning")
    from lossatlas.measurements.track.lightning import TrackerCallback

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(48, 4, generator=g), torch.randint(0, 3, (48,), generator=g)

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                                           torch.nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, i):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=48)
    cb = TrackerCallback(la.track.Sharpness(every=2, data=(X, y), tol=1e-7),
                         out=tmp_path / "pl")
    trainer = L.Trainer(max_epochs=6, callbacks=[cb], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(Net(), loader)
    got = la.load_run(tmp_path / "pl").track("sharpness")
    # the same full-batch GD through la.train, from the same initialization
    ref_model = Net().net
    ref = la.train(ref_model, (X, y), epochs=6, lr=0.5, momentum=0, weight_decay=0,
                   batch_size=48, record=None, progress=False,
                   callbacks=[la.track.Sharpness(every=2, tol=1e-7)]).track("sharpness")
    assert got["step"].tolist() == ref["step"].tolist() == [0, 2, 4, 6]
    assert np.allclose(got["lambda_max"], ref["lambda_max"], rtol=1e-5)
    assert np.allclose(got["two_over_lr"], 4.0)
