"""scratchdet.engine"""
