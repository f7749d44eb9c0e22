"""bitspike.sim"""
