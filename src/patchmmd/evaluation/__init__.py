"""Agreement with human judgments: the statistics (:mod:`.stats`: 2AFC, JND mAP, SROCC/KROCC/PLCC with
bootstrap intervals) and the dataset readers (:mod:`.datasets`: BAPPS 2AFC/JND, MOS/DMOS label files)."""
