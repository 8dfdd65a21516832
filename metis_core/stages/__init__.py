"""The stages of one METIS iteration, in order:

    history -> judge -> select -> rollout -> verify -> record -> update -> sync -> (evaluate, checkpoint)

Each takes the live `Run` and a step number, reads the previous stage's hand-off file and writes
its own. flows/train.py wraps each in a Prefect task.
"""
