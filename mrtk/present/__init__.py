"""Presentation: what a run's rows look like to a person. `summary.py` is the iteration table the loop
prints, `report.py` the HTML report and its PNGs (`mrtk report`), `compare.py` judge sets side by side
(`mrtk compare`), `study.py` a study's variants run and tabulated (`mrtk study`), `trackers.py` the
loop's numbers sent to W&B / TensorBoard / MLflow."""
