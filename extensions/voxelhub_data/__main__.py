from voxelhub_data.app import main

main()
