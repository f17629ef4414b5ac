"""Where evaluated images and their boxes come from: one reader per format (a COCO instances file
beside an image folder, an Ultralytics dataset file), each giving the same in-memory COCO form that
the one evaluator scores with pycocotools."""
