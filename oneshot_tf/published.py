"""Published numbers that our results are read beside (SPEC §3).

Higher is better everywhere: log-likelihoods in nats (minus the papers' NLLs), accuracies
as fractions.
"""

# Per-shot rows, log p(x_t | x_<t) by t, keyed by C_test, then by row name.
PER_SHOT = {
    1: {
        "GMN conv (Bartunov 2016 talk)": {1: -94.35, 2: -92.26, 3: -90.39, 4: -89.75, 5: -88.65, 10: -84.14},
        "GMN FC (Bartunov 2016 talk)": {1: -101.00, 2: -99.67, 3: -98.06, 4: -97.48, 5: -95.89, 10: -92.11},
        "GMN, arXiv 1612.02192 v1 (items with replacement)": {
            1: -90.9, 2: -82.8, 3: -78.8, 4: -76.4, 5: -74.2, 10: -64.6,
        },
        "VAE (arXiv 1612.02192 v1)": {1: -89.2},
        "IWAE k=50 (Burda et al., in the talk)": {1: -103.38},
        "Seq. generative model, 80 steps (Rezende et al.)": {1: -95.5},
    },
    3: {"GMN conv, C=3 (Bartunov 2016 talk)": {1: -95.05, 2: -93.40, 3: -91.87, 4: -91.06, 5: -91.02, 10: -87.55}},
}  # fmt: skip

# Joint log-likelihood of sets of 5 per drawing on the lake split, 1000 importance
# samples (SCHA-VAE's table, Giannone & Winther, ICML 2022): by the chain rule the mean
# of the per-shot t = 1..5.
SET_OF_5 = {
    "SCHA-VAE (LAG), Giannone & Winther 2022": -71.5,
    "SCHA-VAE (mean)": -72.7,
    "CNS": -77.5,
    "Neural Statistician, in SCHA-VAE's table": -85.6,
    "VAE, in SCHA-VAE's table": -88.4,
}

# Few-shot classification accuracy by task (eval.json's classification names).
ACCURACY = {
    "Neural Statistician paper (random character split)": {
        "random_5way_1shot": 0.981, "random_5way_5shot": 0.995, "random_20way_1shot": 0.932, "random_20way_5shot": 0.981,
    },
    "PyTorch Neural Statistician at its best (lake split, ../shared/bench)": {
        "random_5way_1shot": 0.834, "random_5way_5shot": 0.956, "random_20way_1shot": 0.642,
    },
}  # fmt: skip
