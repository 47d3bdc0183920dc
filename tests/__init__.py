# A regular package on purpose: sagemaker's dependency smdebug-rulesconfig installs a top-level `tests`
# package into site-packages, which would otherwise shadow this folder (`import tests.container...`).
