"""The commands that take a few texts: demo (the default model at work), embed (their vectors) and similarity
(their cosines per layer, or the matrix of a file's texts). Each `add_X(sub)` sits beside its `cmd_X(args)`."""

import argparse
import os

import numpy as np

from ..errors import MiniBertError
from .common import (DEMO_TEXTS, POOLINGS, RECIPE_DEFAULT, add_encoding_arguments, add_model_arguments,
                     check_lengths, check_writable, encoding_options, field_for, print_json, refuse_dense_flags,
                     texts_from_arguments)


def cmd_demo(args):
    """Embed a few sentences with the default model (or --model), print every layer's shape and the similarities
    of the sentence vectors its recipe makes."""
    import minibert
    model = minibert.load(args.model, backend=args.backend)
    print(model)
    out = model(DEMO_TEXTS)
    for i, h in enumerate(out.hidden_states):
        print(f"hidden_states[{i}] {'embeddings' if i == 0 else f'layer {i}':>10}  shape {h.shape}")
    print(f"pooler_output               shape {out.pooler_output.shape if out.pooler_output is not None else None}")
    # The sentence vectors as the model's own recipe makes them (its pooling, Dense layers, prompt, length):
    # a mean over the last layer was another model's cosines for any checkpoint with another recipe.
    vecs = model.encode(DEMO_TEXTS)                                      # [3, D]
    print(f"sentence vectors            shape {vecs.shape}  (the model's recipe: pooling {model.recipe.pooling}"
          f"{', ' + str(len(model.recipe.dense)) + ' Dense' if model.recipe.dense else ''})")
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    sims = vecs @ vecs.T
    for i in range(len(DEMO_TEXTS)):
        for j in range(i + 1, len(DEMO_TEXTS)):
            print(f"cosine {sims[i, j]:+.4f}  {DEMO_TEXTS[i]!r} ~ {DEMO_TEXTS[j]!r}")


def add_demo(sub):
    p = sub.add_parser("demo", help="embed a few sentences and print per-layer shapes and similarities",
                       epilog="example: minibert demo")
    add_model_arguments(p)
    p.set_defaults(run=cmd_demo)


def cmd_embed(args):
    import minibert
    args.texts = texts_from_arguments(args.texts)
    if args.sparse:
        return embed_sparse(args)
    model = minibert.load(args.model, backend=args.backend)
    check_lengths(args, model)
    vectors = model.encode(args.texts, **encoding_options(args), dtype="float32")
    if args.json:
        rows = vectors if isinstance(vectors, list) else list(vectors)
        print_json([{"text": t, "shape": list(v.shape), "vector": v.tolist()} for t, v in zip(args.texts, rows)])
        return
    for text, v in zip(args.texts, vectors):
        head = np.array2string(v.reshape(-1)[:6], precision=4, separator=", ")
        print(f"{text[:40]!r:<44} shape {tuple(v.shape)}  {head[:-1]}, ...]  norm {np.linalg.norm(v):.4f}")


def embed_sparse(args):
    """--sparse: SPLADE vectors from the masked-LM head (minibert.load_sparse: a SparseEncoder directory's
    settings, else max pooling of log1p(relu(logits))); per text its non-zero vocabulary ids and weights."""
    import minibert
    refuse_dense_flags(args)
    model = minibert.load_sparse(args.model, backend=args.backend)
    check_lengths(args, model)
    vectors = model.encode_sparse(args.texts, batch_size=args.batch_size or 32, max_length=args.max_length)
    decoded = vectors.decode()
    if args.json:
        print_json([{"text": text, "vocab_size": vectors.vocab_size, "ids": ids.tolist(),
                     "weights": weights.astype(np.float64).tolist(), "tokens": [token for token, _ in tokens]}
                    for text, ids, weights, tokens in zip(args.texts, vectors.ids, vectors.weights, decoded)])
        return
    for text, ids, tokens in zip(args.texts, vectors.ids, decoded):
        top = ", ".join(f"{token} {weight:.4f}" for token, weight in tokens[:8])
        print(f"{text[:40]!r:<44} {len(ids)} of {vectors.vocab_size} non-zero  {top}{', ...' if len(ids) > 8 else ''}")


def add_embed(sub):
    p = sub.add_parser("embed", help="print the vectors of a few texts",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert embed 'A cat.' 'A dog.'\n"
                              "  minibert embed 'A cat.' --layers -4,-3,-2,-1 --combine concat --json")
    p.add_argument("texts", nargs="+", help="texts, or - to read one text per line from standard input")
    add_encoding_arguments(p)
    p.add_argument("--sparse", action="store_true", help="SPLADE vectors from the masked-LM head (a "
                   "...ForMaskedLM checkpoint or a SparseEncoder directory): non-zero vocabulary ids and weights")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_embed)


def cmd_similarity(args):
    import minibert
    if (args.matrix is None) == (args.text_b is None) or (args.matrix is not None and args.text_a is not None):
        raise MiniBertError("similarity takes two texts, or --matrix FILE (a list of texts)")
    if args.matrix is None and args.layer is not None:       # the two-text form shows every layer
        raise MiniBertError("--layer picks the layer of --matrix; two texts are compared at every layer")
    if args.out is not None and (args.matrix is None or not args.out.endswith((".npy", ".csv"))):
        raise MiniBertError("--out writes the --matrix result: give --matrix and a FILE ending in .npy or .csv")
    if args.out is not None:
        check_writable(args.out, "--out")
        if os.path.exists(args.out) and os.path.exists(args.matrix) and os.path.samefile(args.out, args.matrix):
            raise MiniBertError(f"--out {args.out} is the --matrix input itself; writing it would destroy the "
                                "texts: choose another file")
    model = minibert.load(args.model, backend=args.backend)
    args.pooling = args.pooling or model.recipe.pooling
    if args.matrix is not None:
        from ..corpus.readers import read_texts, some_texts
        from ..embed.pooling import resolve_layers
        from ..corpus.search import format_matrix, similarity_matrix
        texts = read_texts(args.matrix, field_for(args.matrix, args.field))
        some_texts(texts, args.matrix)                                  # an empty file: no 0 x 0 matrix
        args.layer = -1 if args.layer is None else args.layer
        [chosen] = resolve_layers(args.layer, model.config.num_hidden_layers)
        layer = layer_label(chosen)
        if head_label(model) and chosen == model.config.num_hidden_layers:     # encode adds the head there
            layer += f" + {head_label(model)}"
        matrix = similarity_matrix(model, texts, layer=args.layer, pooling=args.pooling)     # [N, N]
        if args.out is not None:     # whole or not at all: a full disk left a header-only .npy
            from ..files import atomic_file
            with atomic_file(args.out) as f:
                if args.out.endswith(".npy"):
                    np.save(f, matrix)
                else:
                    np.savetxt(f, matrix, delimiter=",", fmt="%.6f")
        if args.json:
            print_json({"layer": layer, "pooling": args.pooling, "texts": texts, "matrix": matrix.tolist()})
            return
        print(f"cosine similarity, {layer}, {args.pooling} pooling")
        print(format_matrix(texts, matrix))
        return
    vectors = model.encode([args.text_a, args.text_b], layers="all", pooling=args.pooling, normalize=True)
    cosines = (vectors[0] * vectors[1]).sum(-1)                       # [layers]
    # The layers are the encoder's; a recipe's Dense head makes the model's own sentence vector from the
    # last one, which --matrix compares (and search, embed): shown too, so the two commands agree.
    sentence = None
    if head_label(model):
        a, b = model.encode([args.text_a, args.text_b], pooling=args.pooling, normalize=True)      # [D] each
        sentence = float(a @ b)
    if args.json:
        per_layer = {layer_label(i): float(c) for i, c in enumerate(cosines)}
        found = {"pooling": args.pooling, "layers": per_layer}
        print_json(found if sentence is None else {**found, "sentence": sentence})
        return
    print(f"cosine similarity per layer ({args.pooling} pooling)")
    rows = [("embeddings" if i == 0 else f"layer {i}", c) for i, c in enumerate(cosines)]
    for name, c in rows + ([] if sentence is None else [(head_label(model), sentence)]):
        print(f"{name:>10}  {c:+.4f}  {'#' * int(round(max(c, 0) * 40))}")


def add_similarity(sub):
    p = sub.add_parser("similarity", help="cosine similarity of two texts at every layer, or a matrix for a list",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  minibert similarity 'A man plays guitar.' 'Someone plays music.'\n"
                              "  minibert similarity --matrix sentences.txt --layer -1")
    p.add_argument("text_a", nargs="?")
    p.add_argument("text_b", nargs="?")
    p.add_argument("--matrix", metavar="FILE", default=None,
                   help="print the similarity matrix of the texts in FILE "
                        "(.txt a line each, .jsonl/.csv/.tsv with --field)")
    p.add_argument("--field", default=None, help="JSON field or CSV/TSV column holding the text (with --matrix; "
                   "default: text)")
    p.add_argument("--layer", type=int, default=None, help="layer for --matrix (0 = embeddings, -1 = last, the "
                   "default)")
    add_model_arguments(p)
    p.add_argument("--pooling", default=None, choices=POOLINGS, help=RECIPE_DEFAULT)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--out", default=None, help="with --matrix: also write the matrix to FILE (.npy or .csv)")
    p.set_defaults(run=cmd_similarity)


def head_label(model):
    """The recipe's Dense modules by folder ("2_Dense"), or "" when it has none."""
    return " + ".join(d.path for d in model.recipe.dense)


def layer_label(layer):
    return "embeddings" if layer == 0 else f"layer {layer}"


def add_commands(sub):
    for add in (add_demo, add_embed, add_similarity):       # in this order in `minibert --help`
        add(sub)
