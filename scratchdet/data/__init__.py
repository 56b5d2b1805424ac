"""scratchdet.data"""
