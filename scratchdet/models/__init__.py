"""scratchdet.models"""
