"""A scikit-learn compatible transformer: texts in, sentence vectors out, usable inside a Pipeline.

    from sklearn.pipeline import Pipeline
    from sklearn.linear_model import LogisticRegression
    pipe = Pipeline([("embed", minibert.SentenceEncoder()), ("clf", LogisticRegression())])
    pipe.fit(texts, labels); joblib.dump(pipe, "pipe.joblib")

scikit-learn is imported only when scikit-learn itself asks for the estimator's tags; the model is
loaded on first use and rebuilt after unpickling (joblib, n_jobs), so the estimator's parameters are
only the plain values scikit-learn clones and compares.
"""

import numpy as np


class SentenceEncoder:
    """fit (nothing to learn) / transform (texts -> [N, D] vectors) / get_params / set_params.

    model: a model directory, a hub id, or None for the default; encode_options: keywords for
    Model.encode (None: the checkpoint's recipe), e.g. {"layers": -2, "pooling": "mean"}.
    """

    def __init__(self, model=None, backend="cpu", batch_size=None, encode_options=None):
        self.model, self.backend, self.batch_size, self.encode_options = model, backend, batch_size, encode_options

    def get_params(self, deep=True):
        return {"model": self.model, "backend": self.backend, "batch_size": self.batch_size,
                "encode_options": self.encode_options}

    def set_params(self, **params):
        for key, value in params.items():
            if key not in self.get_params():
                from ..errors import InputError
                raise InputError(f"SentenceEncoder has no parameter {key!r}; it has {', '.join(self.get_params())}")
            setattr(self, key, value)
        self.__dict__.pop("_loaded", None)
        return self

    def fit(self, texts, y=None):
        self.encode_kwargs()
        self.loaded_model()               # load now, so a bad model fails at fit, not at transform
        return self

    def transform(self, texts):
        if isinstance(texts, (str, bytes)):          # list() of it would give one vector per character
            from ..errors import InputError
            raise InputError("SentenceEncoder.transform takes a list of texts (or a 1-D array), found a single "
                             f"{type(texts).__name__}; wrap it: [text]")
        texts = texts.tolist() if isinstance(texts, np.ndarray) else list(texts)
        return self.loaded_model().encode(texts, **self.encode_kwargs())

    def encode_kwargs(self):
        options = dict(self.encode_options or {})
        if "batch_size" in options:
            from ..errors import InputError
            raise InputError("SentenceEncoder: give batch_size as its own parameter (batch_size=...), not in "
                             "encode_options")
        return {"batch_size": self.batch_size, **options}

    def fit_transform(self, texts, y=None):
        return self.fit(texts, y).transform(texts)

    def loaded_model(self):
        if "_loaded" not in self.__dict__:
            import minibert
            self._loaded = minibert.load(self.model, backend=self.backend)
        return self._loaded

    def __getstate__(self):
        """Pickle the parameters only; the model loads again where it is unpickled."""
        return {key: value for key, value in self.__dict__.items() if key != "_loaded"}

    def __repr__(self):
        shown = ", ".join(f"{key}={value!r}" for key, value in self.get_params().items())
        return f"SentenceEncoder({shown})"

    def __sklearn_tags__(self):
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags
        return Tags(estimator_type=None, target_tags=TargetTags(required=False), transformer_tags=TransformerTags(),
                    input_tags=InputTags(one_d_array=True, two_d_array=False, string=True))
