"""MuJoCo/robosuite environments: task suites, scripted experts and reasoning labels.

May import `data` (to write episodes), never `vla`. (The suites land with their own issue.)
"""
