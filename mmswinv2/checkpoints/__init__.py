from .formats import LAYOUTS, Layout, convert_state_dict

__all__ = ['LAYOUTS', 'Layout', 'convert_state_dict']
