"""An eval: the val loss and each eval set's, the eval-prompt generations, the red-line checks."""
