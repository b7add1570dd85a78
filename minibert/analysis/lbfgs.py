"""The probe's classifier: multinomial logistic regression, L2 on the weights (not the bias), solved by
L-BFGS, all in NumPy.

Axes: N examples, D features, C classes.
"""

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


def softmax_loss(theta, X, Y, l2):
    """Mean cross-entropy + l2/2 ||W||^2 and its gradient.

    theta [(D + 1) * C] holds W [D, C] then b [C]; X [N, D]; Y [N, C] one-hot.
    """
    N, D = X.shape
    C = Y.shape[1]
    W, b = theta[:D * C].reshape(D, C), theta[D * C:]
    Z = X @ W + b                                                   # [N, C] logits
    Z -= Z.max(axis=1, keepdims=True)                               # stable log-sum-exp
    log_norm = np.log(np.exp(Z).sum(axis=1, keepdims=True))         # [N, 1]
    log_p = Z - log_norm                                            # [N, C]
    loss = -(Y * log_p).sum() / N + 0.5 * l2 * (W * W).sum()
    R = (np.exp(log_p) - Y) / N                                     # [N, C] d loss / d logits
    grad = np.concatenate([(X.T @ R + l2 * W).ravel(), R.sum(axis=0)])
    return loss, grad


def lbfgs(fun, x0, *, max_iter=500, tol=1e-6, memory=10):
    """Minimise a smooth function with L-BFGS (Nocedal & Wright, algorithm 7.4) and a backtracking
    Armijo line search. Stops when max |gradient| <= tol. Returns (x, info dict)."""
    x = x0.copy()
    f, g = fun(x)
    S, Yd = [], []                                                  # recent steps and gradient changes
    it = 0
    for it in range(1, max_iter + 1):
        if np.abs(g).max() <= tol:
            it -= 1
            break
        # Two-loop recursion: d = -H g with H the inverse-Hessian estimate from the stored pairs.
        q = g.copy()
        alphas = []
        for s, y in reversed(list(zip(S, Yd))):
            a = (s @ q) / (y @ s)
            alphas.append(a)
            q -= a * y
        if S:
            q *= (S[-1] @ Yd[-1]) / (Yd[-1] @ Yd[-1])               # initial scaling gamma = s'y / y'y
        else:
            q /= max(np.linalg.norm(g), 1.0)                        # first step: short, along -g
        for (s, y), a in zip(zip(S, Yd), reversed(alphas)):
            q += s * (a - (y @ q) / (y @ s))
        d = -q
        slope = g @ d
        if slope >= 0:                                              # not a descent direction: restart
            S, Yd = [], []
            d, slope = -g, -(g @ g)
        step = 1.0
        while True:
            x_new = x + step * d
            f_new, g_new = fun(x_new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s, y = x_new - x, g_new - g
        if s @ y > 1e-10 * (y @ y):                                 # keep only pairs with positive curvature
            S.append(s)
            Yd.append(y)
            if len(S) > memory:
                S.pop(0)
                Yd.pop(0)
        x, f, g = x_new, f_new, g_new
        if step < 1e-12:
            break
    grad_max = float(np.abs(g).max())
    return x, {"iterations": it, "loss": float(f), "grad_max": grad_max, "converged": grad_max <= tol}


@dataclass
class LogisticRegression:
    """Fitted probe: standardises features with the training mean/std, then softmax(x W + b)."""
    mean: np.ndarray            # [D]
    scale: np.ndarray           # [D]
    W: np.ndarray               # [D, C]
    b: np.ndarray               # [C]
    classes: np.ndarray         # [C] the label of each column
    info: dict

    def decision(self, X):
        return ((np.asarray(X, dtype=np.float64) - self.mean) / self.scale) @ self.W + self.b   # [N, C]

    def predict_proba(self, X):
        Z = self.decision(X)
        Z -= Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        return P / P.sum(axis=1, keepdims=True)                    # [N, C]

    def predict(self, X):
        return self.classes[self.decision(X).argmax(axis=1)]


def one_blas_thread():
    """The solver's matmuls are thin ([N, D] x [D, C], C small): one OpenBLAS thread runs them fastest, and
    measured 30x faster than OpenBLAS's own threads on a busy 2-core machine. Reuses the CPU backend's hold."""
    from ..backends.threads import BLAS
    return BLAS


def fit_logistic(X, y, *, l2=1e-2, standardize=True, max_iter=1000, tol=1e-5):
    """Fit multinomial logistic regression on X [N, D] with labels y [N] (any hashable values).

    Minimises mean cross-entropy + l2/2 ||W||^2, which is scikit-learn's objective with C = 1 / (l2 N).
    Features are standardised first (layers differ in scale by orders of magnitude).
    """
    check_l2(l2)
    X = np.asarray(X, dtype=np.float64)
    classes, y_index = np.unique(np.asarray(y), return_inverse=True)
    N, D = X.shape
    C = len(classes)
    if C < 2:
        raise InputError(f"a probe needs at least 2 classes, found {C} ({classes.tolist()})")
    mean = X.mean(axis=0) if standardize else np.zeros(D)
    scale = X.std(axis=0) if standardize else np.ones(D)
    scale = np.where(scale > 1e-12, scale, 1.0)                     # constant features stay at zero
    Xs = (X - mean) / scale
    Y = np.eye(C)[y_index]                                          # [N, C]
    with one_blas_thread():
        theta, info = lbfgs(lambda t: softmax_loss(t, Xs, Y, l2), np.zeros((D + 1) * C), max_iter=max_iter, tol=tol)
    if not info["converged"]:
        warnings.warn(f"minibert probe: L-BFGS stopped after {info['iterations']} iterations with max |gradient| "
                      f"{info['grad_max']:.1e} > {tol:.0e}; a larger l2= converges sooner", stacklevel=2)
    return LogisticRegression(mean, scale, theta[:D * C].reshape(D, C), theta[D * C:], classes, info)


def check_l2(l2):
    """The L2 strength is a finite number >= 0: NaN makes every loss NaN (the solver then returns zeros and
    the scores look like chance), a negative one makes the loss unbounded below."""
    if isinstance(l2, bool) or not isinstance(l2, (int, float, np.integer, np.floating)) or not 0 <= l2 < np.inf:
        raise InputError(f"l2 (the L2 strength, --l2) must be a finite number >= 0, found {l2!r}")
