"""Real English texts for the benchmarks, from the docstrings of Python's standard library (deterministic for a
given Python version): sentences (about 27 tokens a text) and first sentences (short texts, about 12)."""

import warnings


def stdlib_sentences(count):
    """Up to `count` English sentences from the docstrings of Python's standard library (deterministic)."""
    import importlib
    import inspect
    import re
    names = ["abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
             "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
             "decimal", "difflib", "doctest", "email", "enum", "fileinput", "fnmatch", "fractions", "ftplib",
             "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
             "imaplib", "inspect", "io", "ipaddress", "json", "logging", "lzma", "mailbox", "mimetypes",
             "multiprocessing", "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle",
             "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "random", "re", "sched",
             "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "socketserver",
             "sqlite3", "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
             "threading", "timeit", "tokenize", "trace", "traceback", "turtle", "typing", "unittest", "urllib.parse",
             "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zoneinfo"]
    seen, sentences = set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception:
                continue
            docs = [inspect.getdoc(module)]
            for _, member in sorted(vars(module).items()):
                if inspect.isclass(member) or inspect.isfunction(member):
                    docs.append(inspect.getdoc(member))
                    if inspect.isclass(member):
                        docs += [inspect.getdoc(m) for _, m in sorted(vars(member).items()) if inspect.isfunction(m)]
            for doc in docs:
                if not doc:
                    continue
                text = re.sub(r"\s+", " ", doc)
                for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                    words = sentence.split()
                    if 3 <= len(words) <= 200 and sentence not in seen and re.search("[a-z]{3}", sentence):
                        seen.add(sentence)
                        sentences.append(sentence)
                        if len(sentences) == count:
                            return sentences
    return sentences


def stdlib_first_sentences(count):
    """Short texts (about 12 tokens): the first sentence of each docstring of stdlib_sentences' modules, as
    queries, titles and chat turns are short; deterministic for a given Python version."""
    import re
    firsts, seen = [], set()
    for sentence in stdlib_sentences(50 * count):
        first = re.split(r"(?<=[.!?:])\s", sentence)[0]
        if 3 <= len(first.split()) <= 9 and first not in seen:
            seen.add(first)
            firsts.append(first)
            if len(firsts) == count:
                break
    return firsts
