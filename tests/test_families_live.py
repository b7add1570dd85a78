"""Live parity for every family (pytest -m reference; needs torch + transformers, skipped without them).

Each case builds a fresh random checkpoint with transformers itself, with seeds and shapes unlike the committed
fixtures (other widths, layer and group counts, activations, task-head checkpoints with their prefixes), saves
it, borrows the tokenizer files of the matching fixture, and compares every hidden state, attention map and
pooler output of minibert with the transformers model the checkpoint was saved from.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

import minibert

pytestmark = pytest.mark.reference
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FAMILIES_DIR = Path(__file__).parent / "fixtures" / "families"
TEXTS = ["Hello world!", "Café naïve résumé from Zürich, 北京大学 🍕.",
         "The quick brown fox jumps over the lazy dog; it's 3.14159 percent of the way!", "Привет"]
PAIRS = (["Where is Zürich?", "Don't STOP"], ["Not in 北京.", "the <mask> of France"])
COMMON = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")


def bert_like(**changes):
    settings = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=80,
                    max_position_embeddings=80, **COMMON)
    settings.update(changes)
    return settings


def distil(**changes):
    settings = dict(dim=48, n_layers=3, n_heads=3, hidden_dim=72, max_position_embeddings=80, dropout=0.0,
                    attention_dropout=0.0, attn_implementation="eager")
    settings.update(changes)
    return settings


def albert(**changes):
    settings = bert_like(embedding_size=24, hidden_act="gelu_new")
    settings.update(changes)
    return settings


# Position rows for a 300-token row: distances past max_distance 128 reach MPNet's last buckets.
MPNET = dict(max_position_embeddings=302, pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
             relative_attention_num_buckets=32)
ROBERTA = dict(max_position_embeddings=82, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
               layer_norm_eps=1e-5)

# name: (fixture whose tokenizer is borrowed, model class, config class, config settings, class kwargs)
CASES = {
    "bert": ("bert_cased", "BertModel", "BertConfig", bert_like(hidden_act="gelu_new"), {}),
    "bert_mlm": ("bert_chinese", "BertForMaskedLM", "BertConfig", bert_like(num_hidden_layers=2), {}),
    "bert_no_pooler": ("bert_multilingual", "BertModel", "BertConfig", bert_like(hidden_act="relu"),
                       {"add_pooling_layer": False}),
    "roberta": ("roberta", "RobertaModel", "RobertaConfig", bert_like(**ROBERTA), {}),
    "roberta_mlm": ("roberta", "RobertaForMaskedLM", "RobertaConfig", bert_like(num_hidden_layers=4, **ROBERTA), {}),
    "xlm_roberta": ("xlm_roberta", "XLMRobertaModel", "XLMRobertaConfig",
                    bert_like(**dict(ROBERTA, pad_token_id=1, max_position_embeddings=90)), {}),
    "distilbert": ("distilbert", "DistilBertModel", "DistilBertConfig", distil(activation="relu"), {}),
    "distilbert_sinusoidal_mlm": ("distilbert_sinusoidal", "DistilBertForMaskedLM", "DistilBertConfig",
                                  distil(sinusoidal_pos_embds=True, n_layers=2), {}),
    "electra": ("electra", "ElectraModel", "ElectraConfig", bert_like(embedding_size=24), {}),
    "electra_same_width": ("electra", "ElectraModel", "ElectraConfig", bert_like(embedding_size=48), {}),
    "electra_discriminator": ("electra", "ElectraForPreTraining", "ElectraConfig",
                              bert_like(embedding_size=32, num_hidden_layers=2), {}),
    "electra_generator": ("electra_generator", "ElectraForMaskedLM", "ElectraConfig",
                          bert_like(embedding_size=48, hidden_size=24, num_attention_heads=4), {}),
    "albert": ("albert", "AlbertModel", "AlbertConfig", albert(num_hidden_layers=4), {}),
    "albert_groups": ("albert_groups", "AlbertModel", "AlbertConfig",
                      albert(num_hidden_layers=5, num_hidden_groups=2), {}),
    "albert_mlm": ("albert", "AlbertForMaskedLM", "AlbertConfig", albert(num_hidden_layers=3, num_hidden_groups=3), {}),
    "mpnet": ("mpnet", "MPNetModel", "MPNetConfig", bert_like(**MPNET), {}),
    "mpnet_mlm": ("mpnet", "MPNetForMaskedLM", "MPNetConfig", bert_like(num_hidden_layers=2, hidden_act="gelu_new",
                                                                        **MPNET), {}),
}


def randomize(model, seed):
    """Every parameter clearly non-trivial (default inits hide missing biases or LayerNorms)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position_embeddings" in name and getattr(model.config, "sinusoidal_pos_embds", False):
                continue        # keep DistilBERT's fixed table what transformers made it
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.copy_(0.1 * noise if name.endswith("bias") else 1.0 + 0.2 * noise if "norm" in name.lower()
                    else 0.2 * noise)


def build(tmp_path, case, seed):
    fixture, model_class, config_class, settings, kwargs = CASES[case]
    tokenizer_files = [p for p in (FAMILIES_DIR / fixture).iterdir()
                       if p.name not in ("config.json", "model.safetensors", "golden.npz")]
    vocab_size = minibert.load(str(FAMILIES_DIR / fixture), backend="numpy").config.vocab_size + 3 * seed
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(vocab_size=vocab_size, **settings)
    model = getattr(transformers, model_class)(config, **kwargs)
    randomize(model, seed)
    model.eval()
    model.save_pretrained(tmp_path)
    for path in tokenizer_files:
        shutil.copy(path, tmp_path / path.name)
    return model.base_model


def reference_outputs(base, batch, with_types, dtype):
    base = base.double() if dtype == "float64" else base.float()
    inputs = {"input_ids": torch.from_numpy(batch.input_ids), "attention_mask": torch.from_numpy(batch.attention_mask)}
    if with_types:
        inputs["token_type_ids"] = torch.from_numpy(batch.token_type_ids)
    with torch.no_grad():
        out = base(**inputs, output_hidden_states=True, output_attentions=True, return_dict=True)
    pooled = getattr(out, "pooler_output", None)
    return ([h.numpy() for h in out.hidden_states], [a.numpy() for a in out.attentions],
            None if pooled is None else pooled.numpy())


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fresh_random_checkpoint_matches_transformers(tmp_path, case, seed):
    base = build(tmp_path, case, seed)
    with_types = getattr(base.config, "type_vocab_size", 0) > 1 and "distilbert" not in case
    for backend, dtype, tolerance in [("numpy", "float32", 1e-4), ("cpu", "float32", 1e-4),
                                      ("numpy", "float64", 1e-10)]:
        model = minibert.load(str(tmp_path), backend=backend, dtype=dtype)
        for batch in (model.tokenize(TEXTS), model.tokenize(*PAIRS)):
            ours = model.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids, output_attentions=True)
            hidden, attentions, pooled = reference_outputs(base, batch, with_types, dtype)
            assert len(ours.hidden_states) == len(hidden) and len(ours.attentions) == len(attentions)
            worst = {f"hidden_state_{i}": np.abs(a - b).max()
                     for i, (a, b) in enumerate(zip(ours.hidden_states, hidden))}
            worst.update({f"attention_{i}": np.abs(a - b).max()
                          for i, (a, b) in enumerate(zip(ours.attentions, attentions))})
            assert (ours.pooler_output is None) == (pooled is None), case
            if pooled is not None:
                worst["pooler"] = np.abs(ours.pooler_output - pooled).max()
            assert max(worst.values()) < tolerance, (backend, dtype, worst)


@pytest.mark.parametrize("case", ["mpnet", "mpnet_mlm"])
def test_mpnet_long_row_matches_transformers(tmp_path, case):
    """300 tokens: every bucket of the relative position bias, which the short texts above do not reach."""
    base = build(tmp_path, case, 5)
    ids = np.random.default_rng(5).integers(5, base.config.vocab_size, size=(2, 300))
    ids[:, 0], ids[:, -1] = 0, 2
    mask = np.ones_like(ids)
    ids[1, 200:], mask[1, 200:] = 1, 0                 # the second row padded after 200 tokens
    for backend, dtype, tolerance in [("numpy", "float32", 1e-4), ("cpu", "float32", 1e-4), ("numpy", "float64", 1e-10),
                                      ("cpu", "float64", 1e-10)]:
        model = minibert.load(str(tmp_path), backend=backend, dtype=dtype)
        ours = model.forward(ids, mask)
        reference = base.double() if dtype == "float64" else base.float()
        with torch.no_grad():
            theirs = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                               output_hidden_states=True).hidden_states
        worst = max(np.abs(a[m] - b.numpy()[m]).max() for a, b in zip(ours.hidden_states, theirs)
                    for m in [mask.astype(bool)])
        assert worst < tolerance, (backend, dtype, worst)


def test_mpnet_buckets_match_transformers_up_to_3000_tokens():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder
    from minibert.kernels.reference import relative_position_buckets
    T = 3000
    distance = torch.arange(T)[None, :] - torch.arange(T)[:, None]
    np.testing.assert_array_equal(relative_position_buckets(T, 32, 128),
                                  MPNetEncoder.relative_position_bucket(distance).numpy())


def test_parity_ops_names_the_mpnet_position_bias():
    from minibert.analysis.parity import compare_ops
    model = minibert.load(str(FAMILIES_DIR / "mpnet"), backend="cpu", dtype="float64")
    rows = dict(compare_ops(model, TEXTS[:2]))
    assert list(rows)[:3] == ["embeddings", "position_bias", "layer1.query"]
    assert rows["position_bias"]["max_abs"] == 0.0                   # the same table entries, gathered
    assert max(row["max_abs"] for row in rows.values()) < 1e-10, rows
