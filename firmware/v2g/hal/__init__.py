# Hardware abstraction. Only `v2g.board` and modules in this package import
# `machine`; drivers receive streams, buses and pins built here.
