"""bitspike.sw"""
