"""allegro_driver"""
