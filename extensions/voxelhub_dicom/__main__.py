from voxelhub_dicom.edge import main

main()
