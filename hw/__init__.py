"""bitspike.hw"""
