"""The README.md written beside a fine-tuned classifier: a model card in the Hugging Face Hub's form, YAML front
matter between --- lines (what the Hub and huggingface_hub's metadata_load read), then Markdown.

    library_name  minibert
    base_model    the hub id the encoder came from; left out for a local directory (the Hub wants an id)
    pipeline_tag  text-classification (sequence) or token-classification (token)
    tags          minibert, the model family, the pipeline tag
    datasets      the names given to finetune(datasets=) / --dataset, when any
    metrics       accuracy, when a dev set was scored

The body: the labels, the recipe, the train loss and dev accuracy per epoch, the command (or call) that
reproduces the run, and how to load the directory with minibert and with transformers.
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

PIPELINE_TAGS = {"sequence": "text-classification", "token": "token-classification"}
AUTO_CLASSES = {"sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification"}


def run_description(*, base_model: Optional[str], source: str, recipe: Any, datasets: Any = None,
                    command: Optional[str] = None, pairs: bool = False) -> dict:
    """What finetune knows of its run, kept on the Classifier (Classifier.training) for the card. pairs: the
    examples were text pairs."""
    return {"base_model": base_model, "source": source, "recipe": recipe, "datasets": list(datasets or []),
            "command": command, "pairs": pairs}


def yaml_scalar(value) -> str:
    """A JSON string is a YAML double-quoted scalar: no value can break the front matter."""
    return json.dumps(value)


def front_matter(classifier) -> str:
    training = classifier.training
    pipeline_tag = PIPELINE_TAGS[classifier.task]
    lines = ["---", f"library_name: {yaml_scalar('minibert')}"]
    if training["base_model"]:
        lines.append(f"base_model: {yaml_scalar(training['base_model'])}")
    lines.append(f"pipeline_tag: {yaml_scalar(pipeline_tag)}")
    lines += ["tags:"] + [f"- {yaml_scalar(tag)}" for tag in ("minibert", classifier.config.model_type, pipeline_tag)]
    if training["datasets"]:
        lines += ["datasets:"] + [f"- {yaml_scalar(name)}" for name in training["datasets"]]
    if any("dev_accuracy" in record for record in classifier.history):
        lines += ["metrics:", f"- {yaml_scalar('accuracy')}"]
    return "\n".join(lines + ["---"])


def epoch_table(history) -> list:
    scored = any("dev_accuracy" in record for record in history)
    lines = ["| epoch | train loss |" + (" dev accuracy |" if scored else ""),
             "|---|---|" + ("---|" if scored else "")]
    for record in history:
        lines.append(f"| {record['epoch']} | {record['train_loss']:.6f} |"
                     + (f" {record['dev_accuracy']:.6f} |" if scored else ""))
    best = history[-1].get("best_epoch") if history else None
    if best is not None:
        lines += ["", f"Early stopping kept the weights of epoch {best}, the best dev accuracy."]
    return lines


def model_card(classifier, directory: str) -> str:
    """README.md for `classifier` (trained by finetune: classifier.training set), saved in `directory`."""
    training, task = classifier.training, classifier.task
    base = training["base_model"] or training["source"]
    recipe = asdict(training["recipe"])
    scored = any("dev_accuracy" in record for record in classifier.history)
    reproduce = training["command"] or (
        "from minibert.train.finetune import TrainingRecipe, finetune\n"
        f"classifier = finetune({base!r}, train, task={task!r}{', dev=dev' if scored else ''}, "
        f"recipe={training['recipe']!r})\n"
        f"classifier.save({directory!r})")
    language = "bash" if training["command"] else "python"
    texts = '["first text"], ["second text"]' if training["pairs"] else '["a text"]'
    use = f"tag({texts})" if task == "token" else f"predict({texts})"
    body = [
        "", f"# {task} classifier fine-tuned from {Path(base).name if not training['base_model'] else base}", "",
        f"Fine-tuned with [minibert](https://pypi.org/project/minibert-numpy/) (NumPy, no torch) from `{base}`"
        + (f" on {', '.join(training['datasets'])}" if training["datasets"] else "") + ".",
        f"Labels (id order): {', '.join(str(label) for label in classifier.labels)}.", "",
        "## Training recipe", "", "| setting | value |", "|---|---|",
        *(f"| {name} | {value} |" for name, value in recipe.items()), "",
        "## Metrics per epoch", "", *epoch_table(classifier.history), "",
        "## Reproduce", "", f"```{language}", reproduce, "```", "",
        "## Use", "", "```python", "import minibert",
        f"classifier = minibert.load_classifier({directory!r})", f"print(classifier.{use})", "```", "",
        "With transformers:", "", "```python", f"from transformers import {AUTO_CLASSES[task]}, AutoTokenizer",
        f"model = {AUTO_CLASSES[task]}.from_pretrained({directory!r})",
        f"tokenizer = AutoTokenizer.from_pretrained({directory!r})",
        f"logits = model(**tokenizer({texts}, return_tensors=\"pt\")).logits", "```", ""]
    return front_matter(classifier) + "\n" + "\n".join(body)
