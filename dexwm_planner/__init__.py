"""dexwm_planner: the DexWM world model (encoders, CDiT predictor, hand head), its data, training
and evaluation, and the CEM/MPC planner that uses it. No rclpy here."""

__version__ = "0.1.0"
