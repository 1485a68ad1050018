"""Gin files. A package so that gin's package-resource reader resolves
`include 'gin_configs/...'` from any working directory, installed or not
(t5x does the same with its configs).
"""
