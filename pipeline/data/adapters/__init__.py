"""Adapters from public data sets, in their published layouts, to the project's manifest (`graystem prepare`).

One module per data set family, each with `read(source, options) -> Collected` (common.py); writer.py writes
the manifest and the list of what was left out. A module is imported only when its format is chosen.
"""

FORMATS = {
    "medmnist": ("medmnist", "a MedMNIST 2D .npz (PNGs written; train+val = CV pool, test = split test)"),
    "nih-cxr14": ("nih_cxr14", "NIH ChestX-ray14: Data_Entry_2017*.csv + images folders + official lists"),
    "chexpert": ("chexpert", "CheXpert: train.csv / valid.csv with uncertain labels"),
    "mimic-cxr-jpg": ("mimic_cxr_jpg", "MIMIC-CXR-JPG: chexpert/metadata/split .csv.gz + files/ tree"),
    "rsna-pneumonia": ("rsna_pneumonia", "RSNA Pneumonia: stage_2_train_labels.csv + DICOM folder"),
    "vindr-cxr": ("vindr_cxr", "VinDr-CXR: image_labels_*.csv (several radiologists) + DICOMs"),
    "bus-bra": ("bus_bra", "BUS-BRA: bus_data.csv + published 5-/10-fold partitions"),
    "busi": ("busi", "BUSI: benign/ malignant/ normal/ folders, masks left out"),
    "image-folder": ("image_folder", "one sub-folder per class, optional train/ val/ test/ folders"),
    "csv": ("generic_csv", "any CSV: --image-col --label-col --patient-col --fold-col ..."),
}
