"""The README.md written beside a trained model (a fine-tuned classifier, a continued-pretraining checkpoint): a
model card in the Hugging Face Hub's form, YAML front matter between --- lines (what the Hub and
huggingface_hub's metadata_load read), then Markdown.

    library_name  minibert
    base_model    the hub id the encoder came from; left out for a local directory (the Hub wants an id)
    pipeline_tag  text-classification, token-classification (finetune) or fill-mask (pretrain)
    tags          minibert, the model family, the pipeline tag
    datasets      the names given (datasets=, --dataset), when any
    metrics       accuracy (finetune's dev set; regression: mse, pearsonr, spearmanr) or perplexity
                  (pretrain's held-out text), when scored

The body: what was trained, the recipe, the numbers of each epoch, the command (or call) that reproduces the
run, and how to load the directory with minibert and with transformers.
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

PIPELINE_TAGS = {"sequence": "text-classification", "token": "token-classification", "mlm": "fill-mask"}
AUTO_CLASSES = {"sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification",
                "mlm": "AutoModelForMaskedLM"}
# (history key, column heading, the Hub's metric id or None)
COLUMNS = (("train_loss", "train loss", None), ("dev_accuracy", "dev accuracy", "accuracy"),
           ("dev_mse", "dev MSE", "mse"), ("dev_pearson", "dev Pearson", "pearsonr"),
           ("dev_spearman", "dev Spearman", "spearmanr"),
           ("dev_loss", "held-out loss", None), ("dev_perplexity", "held-out perplexity", "perplexity"))


def run_description(*, base_model: Optional[str], source: str, recipe: Any, datasets: Any = None,
                    command: Optional[str] = None, pairs: bool = False, dev_texts: bool = False) -> dict:
    """What a training run knows of itself, for its card (a Classifier keeps it as .training). pairs: the
    examples were text pairs; dev_texts: pretrain was given its held-out documents."""
    return {"base_model": base_model, "source": source, "recipe": recipe, "datasets": list(datasets or []),
            "command": command, "pairs": pairs, "dev_texts": dev_texts}


def check_run_names(datasets: Any, command: Any) -> None:
    """finetune's and pretrain's datasets= and command=, checked before any work."""
    from ..errors import InputError
    if datasets is not None and (isinstance(datasets, str) or not all(isinstance(d, str) for d in datasets)):
        raise InputError(f"datasets must be a list of names (str), found {datasets!r}")
    for name in datasets or []:
        if not name.strip() or any(c.isspace() for c in name):     # a Hub dataset id has neither
            raise InputError(f"datasets: {name!r} is not a dataset id (a Hub id such as 'glue' or 'org/name' has "
                             "no spaces and is not blank); the model card's metadata would name no dataset")
    if command is not None and not isinstance(command, str):
        raise InputError(f"command must be a str (the command line that reproduces the run), found {command!r}")


def yaml_scalar(value) -> str:
    """A JSON string is a YAML double-quoted scalar: no value can break the front matter."""
    return json.dumps(value)


def front_matter(training: dict, task: str, model_type: str, history: list) -> str:
    pipeline_tag = PIPELINE_TAGS[task]
    lines = ["---", f"library_name: {yaml_scalar('minibert')}"]
    if training["base_model"]:
        lines.append(f"base_model: {yaml_scalar(training['base_model'])}")
    lines.append(f"pipeline_tag: {yaml_scalar(pipeline_tag)}")
    lines += ["tags:"] + [f"- {yaml_scalar(tag)}" for tag in ("minibert", model_type, pipeline_tag)]
    if training["datasets"]:
        lines += ["datasets:"] + [f"- {yaml_scalar(name)}" for name in training["datasets"]]
    metrics = [metric for key, _, metric in COLUMNS if metric and any(key in record for record in history)]
    if metrics:
        lines += ["metrics:"] + [f"- {yaml_scalar(metric)}" for metric in metrics]
    return "\n".join(lines + ["---"])


def epoch_table(history: list, what: str) -> list:
    """| epoch | each number the history holds |; a record without one (pretrain's epoch 0) leaves it blank."""
    columns = [(key, heading) for key, heading, _ in COLUMNS if any(key in record for record in history)]
    lines = ["| epoch | " + " | ".join(heading for _, heading in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for record in history:
        lines.append(f"| {record['epoch']} | " + " | ".join(f"{record[key]:.6f}" if key in record else ""
                                                           for key, _ in columns) + " |")
    best = history[-1].get("best_epoch") if history else None
    if best is not None:
        lines += ["", f"Early stopping kept the weights of epoch {best}, the best {what}."]
    return lines


def card(*, training: dict, task: str, model_type: str, history: list, directory: str, about: str, call: str,
         use: str, best: str, texts: str) -> str:
    """The card's text. call: the Python call that reproduces the run (when no command line is known); use:
    minibert lines after `import minibert`; best: what early stopping compared; texts: the examples' inputs."""
    base = training["base_model"] or training["source"]
    reproduce, language = (training["command"], "bash") if training["command"] else (call, "python")
    auto = AUTO_CLASSES[task]
    body = [
        "", f"# {PIPELINE_TAGS[task]} model trained from {training['base_model'] or Path(base).name}", "",
        f"Trained with [minibert](https://pypi.org/project/minibert-numpy/) (NumPy, no torch) from `{base}`"
        + (f" on {', '.join(training['datasets'])}" if training["datasets"] else "") + ". " + about, "",
        "## Training recipe", "", "| setting | value |", "|---|---|",
        *(f"| {name} | {value} |" for name, value in asdict(training["recipe"]).items()), "",
        "## Metrics per epoch", "", *epoch_table(history, best), "",
        "## Reproduce", "", f"```{language}", reproduce, "```", "",
        "## Use", "", "```python", "import minibert", use, "```", "",
        "With transformers:", "", "```python", f"from transformers import {auto}, AutoTokenizer",
        f"model = {auto}.from_pretrained({directory!r})", f"tokenizer = AutoTokenizer.from_pretrained({directory!r})",
        f"logits = model(**tokenizer({texts}, return_tensors=\"pt\")).logits", "```", ""]
    return front_matter(training, task, model_type, history) + "\n" + "\n".join(body)


# A regression model's objective, as its card describes it: (finetune's loss, what the training minimised)
OBJECTIVES = {"regression": ("mse", "the mean squared error of its raw output (transformers' problem_type "
                             "\"regression\"); CrossEncoder applies Identity, so its scores are the predicted values"),
              "multi_label_classification": ("bce", "the binary cross-entropy of sigmoid(output) against scores in "
                                             "[0, 1] (sentence-transformers' BinaryCrossEntropyLoss); CrossEncoder "
                                             "applies Sigmoid, so its scores are those probabilities")}


def regression_card(classifier, directory: str) -> str:
    """README.md for a one-output model finetune trained (task "regression"), saved in `directory`."""
    training = classifier.training
    base = training["base_model"] or training["source"]
    loss, objective = OBJECTIVES[classifier.problem_type]
    scored = any("dev_spearman" in record for record in classifier.history)
    texts = '["first text"], ["second text"]' if training["pairs"] else '["a text"]'
    pairs = '[("first text", "second text")]' if training["pairs"] else '[("a text", "")]'
    return card(
        training=training, task="sequence", model_type=classifier.config.model_type, history=classifier.history,
        directory=directory, best="dev Spearman correlation", texts=texts,
        about=f"A model with one output (a score per {'pair' if training['pairs'] else 'text'}) trained on "
              f"{objective}. It loads in sentence-transformers' `CrossEncoder({directory!r})`, whose `predict` "
              "gives the same scores as minibert's.",
        call=("from minibert.train.finetune import TrainingRecipe, finetune\n"
              f"model = finetune({base!r}, train, task='regression', loss={loss!r}"
              f"{', dev=dev' if scored else ''}, recipe={training['recipe']!r})\nmodel.save({directory!r})"),
        use=(f"scorer = minibert.load_cross_encoder({directory!r})\nprint(scorer.predict({pairs}))"))


def classifier_card(classifier, directory: str) -> str:
    """README.md for a Classifier finetune trained (classifier.training set), saved in `directory`."""
    if len(classifier.labels) == 1 and classifier.problem_type in OBJECTIVES:
        return regression_card(classifier, directory)
    training, task = classifier.training, classifier.task
    base = training["base_model"] or training["source"]
    scored = any("dev_accuracy" in record for record in classifier.history)
    texts = '["first text"], ["second text"]' if training["pairs"] else '["a text"]'
    return card(
        training=training, task=task, model_type=classifier.config.model_type, history=classifier.history,
        directory=directory, best="dev accuracy", texts=texts,
        about=f"A {task} classifier; labels (id order): {', '.join(str(label) for label in classifier.labels)}.",
        call=("from minibert.train.finetune import TrainingRecipe, finetune\n"
              f"classifier = finetune({base!r}, train, task={task!r}{', dev=dev' if scored else ''}, "
              f"recipe={training['recipe']!r})\nclassifier.save({directory!r})"),
        use=(f"classifier = minibert.load_classifier({directory!r})\n"
             f"print(classifier.{'tag' if task == 'token' else 'predict'}({texts}))"))


def masked_lm_card(training: dict, model_type: str, history: list, mask: str, directory: str) -> str:
    """README.md for a checkpoint pretrain wrote (its masked-LM head continued on a corpus) in `directory`."""
    base = training["base_model"] or training["source"]
    texts = f'["The {mask} sat on the mat."]'
    return card(
        training=training, task="mlm", model_type=model_type, history=history, directory=directory, texts=texts,
        best="held-out loss", about="Masked-LM pretraining continued on a corpus (the encoder and its MLM head).",
        call=("from minibert.train.pretrain import PretrainRecipe, pretrain\n"
              f"pretrain({base!r}, texts, recipe={training['recipe']!r}"
              f"{', dev_texts=dev_texts' if training['dev_texts'] else ''}, checkpoint_dir={directory!r})"),
        use=f"model = minibert.load({directory!r})\nprint(model.fill_mask({texts}))")
