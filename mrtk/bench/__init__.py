"""`mrtk bench`: the workloads against their plain baselines (workloads.py), the SGLang path against
simulated servers (serving.py), and the simulated servers themselves (serving_sim.py)."""
