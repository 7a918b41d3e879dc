"""One module per pipeline stage; each exposes `run(cfg, ...)`, called by `ups.cli`.

The module name is the DVC stage name in snake_case (stage `prepare-audio` ->
`ups/stages/prepare_audio.py`), so a stage's code is found from dvc.yaml in one step.
"""
