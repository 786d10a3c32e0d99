from lakestack_vector_core.app import main

if __name__ == "__main__":
    main()
