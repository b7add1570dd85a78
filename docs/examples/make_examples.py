"""Writes the two small labelled files the README's probe examples run on (deterministic).

who_acts.csv   "The fox chased the owl." -> fox. Both orders of a pair hold the same words, so only
               word order tells who acts: a bag of word vectors (the embedding layer) cannot.
names.conll    ambiguous names tagged as a person or a place by their context ("Jordan said ..." vs
               "We flew to Jordan ..."): the same word, two tags.
Run: python docs/examples/make_examples.py
"""

import csv
import itertools
import random
from pathlib import Path

HERE = Path(__file__).parent


def who_acts(path):
    rng = random.Random(0)
    animals = ["cat", "dog", "fox", "horse", "mouse", "owl", "rabbit", "wolf"]
    verbs = ["chased", "bit", "followed", "watched", "pushed", "scared", "found", "helped"]
    rows = []
    for a, b in itertools.combinations(animals, 2):
        for verb in rng.sample(verbs, 6):
            subject, obj = (a, b) if rng.random() < 0.5 else (b, a)
            rows.append((f"The {subject} {verb} the {obj}.", subject))
    rng.shuffle(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "who"])
        writer.writerows(rows)


def names(path):
    rng = random.Random(1)
    ambiguous = ["Jordan", "Georgia", "Chad", "Florence", "Victoria", "Lincoln", "Sydney", "Austin", "Orlando",
                 "Charlotte", "Paris", "Chelsea"]
    person = ["{X} said the plan would work .", "Yesterday {X} met the minister .", "I asked {X} about her trip .",
              "According to {X} , the meeting went well .", "{X} smiled and waved at us .",
              "We had dinner with {X} on Friday ."]
    place = ["We flew to {X} last week .", "The weather in {X} was mild .", "Prices in {X} rose again .",
             "According to reports from {X} , the roads are closed .", "{X} lies on the coast .",
             "They moved from {X} to the countryside ."]
    lines = []
    for i in range(144):
        kind = "PER" if i % 2 == 0 else "LOC"
        name = rng.choice(ambiguous)
        for word in rng.choice(person if kind == "PER" else place).split():
            lines.append(f"{name} B-{kind}" if word == "{X}" else f"{word} O")
        lines.append("")
    Path(path).write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    who_acts(HERE / "who_acts.csv")
    names(HERE / "names.conll")
