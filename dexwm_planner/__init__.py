"""dexwm_planner"""
