"""dexwm_sim"""
