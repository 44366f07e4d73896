"""Name -> estimator metadata. Modules are imported lazily, on first use of a name."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class EstimatorInfo:
    """What the service, the CLI and the README need to know about an estimator.

    needs: ``features`` (X = target features (n, d), y = labels),
    ``probs`` (X = source-model class probabilities (n, Z), y = labels),
    ``esm`` (X = base-encoder features of the target, y = labels, ``esm=`` a fitted map),
    ``domains`` (X, Y = two domains' representations; no labels).
    """

    name: str
    target: str  # "module:function" inside the estimators package
    needs: str
    higher_is_better: bool
    paper: str
    cost: str
    regression: bool = False  # accepts float targets (regression=True)

    def load(self) -> Callable[..., float]:
        module, func = self.target.split(":")
        fn: Callable[..., float] = getattr(importlib.import_module(f"estimators.{module}"), func)
        return fn


_E = EstimatorInfo
REGISTRY: dict[str, EstimatorInfo] = {
    e.name: e
    for e in [
        _E("logme", "logme:logme", "features", True, "You et al., ICML 2021 / JMLR 2022", "O(nd min(n,d) + min(n,d)^3 + nd)", regression=True),
        _E("hscore", "hscore:hscore", "features", True, "Bao et al., ICIP 2019", "O(nd^2 + d^3 + Cd^2)"),
        _E("hscore_shrinkage", "hscore_shrinkage:hscore_shrinkage", "features", True, "Ibrahim et al., ICLR 2023", "O(nd^2 + d^3 + Cd^2)"),
        _E("leep", "leep:leep", "probs", True, "Nguyen et al., ICML 2020", "O(nZ)"),
        _E("nce", "nce:nce", "probs", True, "Tran et al., ICCV 2019", "O(nZ + CZ)"),
        _E("nleep", "nleep:nleep", "features", True, "Li et al., CVPR 2021",
           "O(md min(m,d) + iters * m * K * d'^2 + n K d'^2), m <= 5,000 fit rows, K = min(5C, 512), d' <= 64"),
        _E("transrate", "transrate:transrate", "features", True, "Huang et al., ICML 2022", "O(nd^2 + d^3 + sum_c n_c min(n_c,d)^2)"),
        _E("gbc", "gbc:gbc", "features", True, "Pandy et al., CVPR 2022", "O(C^2 d + nd)"),
        _E("sfda", "sfda:sfda", "features", True, "Shao et al., ECCV 2022", "O(nd^2 + d^3 + ndC)"),
        _E("tmi", "tmi:tmi", "features", True, "Xu & Kang, ICCV 2023", "O(sum_c n_c^2 d) (per-class k-NN)"),
        _E("etran_energy", "etran:etran_energy", "features", True, "Gholami et al., ICCV 2023", "O(nd)"),
        _E("etran_lda", "etran:etran_lda", "features", True, "Gholami et al., ICCV 2023", "O(ndC)"),
        _E("ped", "ped:ped", "features", True, "Li et al., ICCV 2023", "O(nd + steps C^2 d) + base estimator"),
        _E("esm_logme", "esm:esm_logme", "esm", True, "Schulte et al., EMNLP 2024", "O(nd^2) map + LogME"),
        _E("esm_etran_lda", "esm:esm_etran_lda", "esm", True, "Gholami et al., ICCV 2023 through an ESM (Schulte et al., EMNLP 2024)", "O(nd^2) map + O(ndC)"),
        _E("esm_hscore_shrinkage", "esm:esm_hscore_shrinkage", "esm", True, "Ibrahim et al., ICLR 2023 through an ESM (Schulte et al., EMNLP 2024)", "O(nd^2) map + O(nd^2 + d^3 + Cd^2)"),
        _E("mmd", "divergences:mmd", "domains", False, "Gretton et al., JMLR 2012", "O((n+m)^2 d)"),
        _E("frechet", "divergences:frechet_distance", "domains", False, "Heusel et al., NeurIPS 2017", "O((n+m) d^2 + d^3)"),
        _E("gaussian_kl", "divergences:gaussian_kl", "domains", False, "Gaussian KL(P||Q)", "O((n+m) d^2 + d^3)"),
        _E("gaussian_js", "divergences:gaussian_js", "domains", False, "Gaussian Jensen-Shannon", "O((n+m) d^2 + d^3)"),
        _E("sliced_wasserstein", "divergences:sliced_wasserstein", "domains", False, "Bonneel et al., 2015", "O(L (n+m) (d + log n))"),
        _E("proxy_a_distance", "divergences:proxy_a_distance", "domains", False, "Ben-David et al., NeurIPS 2007", "O((n+m) d^2 + cv d^3) (ridge classifier, default)"),
        _E("semb", "divergences:mean_embedding_similarity", "domains", True, "Poth et al., EMNLP 2021", "O((n+m) d)"),
    ]
}
