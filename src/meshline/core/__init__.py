"""The resource model: envelope, kinds, schemas, selectors and errors shared by every part."""
