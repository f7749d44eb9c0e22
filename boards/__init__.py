"""bitspike.boards"""
