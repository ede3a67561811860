"""A headless stand-in for the Slicer application, built on the MRML libraries of ``slicer-core``.

It wires what the Slicer application would: a scene, the application logic with the colour
logic registered as "Colors" (otherwise slice views render black), the module logics VoteMI's
nodes need, the Red/Yellow/Green slice views with Slicer's default orientations, and offscreen
(EGL) rendering of those views to PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

#: The slice views of Slicer's default layouts and the orientation each shows.
DEFAULT_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


class HeadlessSlicer:
    """Scene, logics and slice views, as the Slicer application sets them up."""

    def __init__(self, view_size=(420, 420)):
        import slicer
        import vtk

        self.view_size = view_size
        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        colors = self.app_logic.GetColorLogic()
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.app_logic.SetModuleLogic("Colors", colors)
        self.app_logic.SetSliceLogics(vtk.vtkCollection())
        self.app_logic.SetViewLogics(vtk.vtkCollection())
        self.logics = {}
        for name, logic_class in (("Volumes", slicer.vtkSlicerVolumesLogic), ("Markups", slicer.vtkSlicerMarkupsLogic),
                                  ("Tables", slicer.vtkSlicerTablesLogic), ("Plots", slicer.vtkSlicerPlotsLogic),
                                  ("Texts", slicer.vtkSlicerTextsLogic),
                                  ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)):
            logic = logic_class()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[name] = logic  # the application logic does not keep Python objects alive
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        self.slice_logics = {}
        for name, orientation in DEFAULT_VIEWS:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            node = logic.AddSliceNode(name)
            node.SetDefaultOrientation(orientation)
            node.SetOrientationToDefault()
            logic.ResizeSliceNode(*view_size)
            self.app_logic.GetSliceLogics().AddItem(logic)
            self.slice_logics[name] = logic
        self._views = {}

    def slice_node(self, name):
        return self.slice_logics[name].GetSliceNode()

    def load_volume(self, path, name=None):
        """Load an image file as a scalar volume (what ``slicer.util.loadVolume`` does in the app)."""
        path = str(path)
        node = self.logics["Volumes"].AddArchetypeVolume(path, name or Path(path).name.split(".")[0], 0)
        if node is None:
            raise OSError(f"cannot load {path}")
        return node

    def show(self, volume_node, fit=True):
        """Show a volume in every slice view, fitted to the view."""
        for logic in self.slice_logics.values():
            logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
            if fit:
                logic.FitSliceToBackground()

    # ----------------------------------------------------------------------------------------
    # Offscreen rendering

    def _view(self, name):
        if name in self._views:
            return self._views[name]
        import slicer
        import vtkmodules.vtkInteractionStyle  # noqa: F401  (registers the interactor styles)
        import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text of the markup labels)
        import vtkmodules.vtkRenderingOpenGL2  # noqa: F401
        from vtkmodules.vtkRenderingCore import (vtkActor2D, vtkImageMapper, vtkRenderer, vtkRenderWindow,
                                                 vtkRenderWindowInteractor)

        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(self.app_logic)
        for manager in ("vtkMRMLMarkupsDisplayableManager", "vtkMRMLCrosshairDisplayableManager",
                        "vtkMRMLOrientationMarkerDisplayableManager", "vtkMRMLRulerDisplayableManager"):
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        window = vtkRenderWindow()
        window.SetOffScreenRendering(1)
        window.SetSize(*self.view_size)
        renderer = vtkRenderer()
        renderer.GetActiveCamera().ParallelProjectionOn()
        window.AddRenderer(renderer)
        interactor = vtkRenderWindowInteractor()
        interactor.SetRenderWindow(window)
        managers = slicer.vtkMRMLDisplayableManagerGroup()
        managers.Initialize(factory, renderer)
        managers.SetMRMLDisplayableNode(self.slice_node(name))
        # The slice image goes behind the markups (Slicer's lightbox manager does the same).
        mapper = vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        actor = vtkActor2D()
        actor.SetMapper(mapper)
        actor.GetProperty().SetDisplayLocationToBackground()
        renderer.AddViewProp(actor)
        view = {"window": window, "renderer": renderer, "interactor": interactor, "managers": managers,
                "mapper": mapper, "actor": actor}
        self._views[name] = view
        return view

    def render_view(self, name):
        """Render one slice view offscreen; return its pixels as an (height, width, 3) uint8 array."""
        from vtk.util import numpy_support
        from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

        view = self._view(name)
        view["mapper"].SetInputConnection(self.slice_logics[name].GetImageDataConnection())
        view["window"].Render()
        view["window"].Render()  # the markups widgets build their representations on the first render
        grab = vtkWindowToImageFilter()
        grab.SetInput(view["window"])
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, 3)
        return pixels[::-1].copy()  # VTK's first row is the bottom one

    def render_views(self, names=("Red", "Yellow", "Green")):
        return {name: self.render_view(name) for name in names}

    def window_class(self, name="Red"):
        return self._view(name)["window"].GetClassName()

    # ----------------------------------------------------------------------------------------
    # Saving and loading scenes

    def save_bundle(self, folder) -> Path:
        """Save the scene with all its data into ``folder`` (as "Save scene" into a directory does)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not self.app_logic.SaveSceneToSlicerDataBundleDirectory(str(folder), None):
            raise OSError(f"saving the scene to {folder} failed")
        scenes = sorted(folder.glob("*.mrml"))
        if not scenes:
            raise OSError(f"no .mrml file written to {folder}")
        return scenes[0]

    def load_scene(self, mrml_path) -> None:
        """Replace the scene contents with a saved scene."""
        self.scene.SetURL(str(mrml_path))
        if not self.scene.Connect():
            raise OSError(f"loading {mrml_path} failed")

    def close(self):
        for view in self._views.values():
            view["managers"].SetMRMLDisplayableNode(None)
            view["window"].Finalize()
        self._views.clear()


def main_case_image() -> Path:
    """T1 image of the real case the MRML tests use (../shared/data beside the repository)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "tcga_du_7294" / "image.nii.gz"
    assert path.exists(), f"real test data missing: {path} (the repository must sit beside shared/)"
    return path


#: Colour of the controller bar above each slice view in Slicer.
VIEW_BAR_COLORS = {"Red": (243, 74, 51), "Yellow": (237, 213, 76), "Green": (110, 176, 75)}


def views_with_bars(views: dict, captions: dict):
    """Rendered slice views side by side, each under a bar in its view colour with a caption,
    as Slicer's slice view controllers look; returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    bar = 26
    height = max(pixels.shape[0] for pixels in views.values()) + bar
    width = sum(pixels.shape[1] for pixels in views.values())
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    left = 0
    for name, pixels in views.items():
        view_width = pixels.shape[1]
        draw.rectangle([left, 0, left + view_width - 1, bar - 1], fill=VIEW_BAR_COLORS.get(name, (128, 128, 128)))
        draw.text((left + 8, 4), captions.get(name, name), fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(pixels), (left, bar))
        draw.line([left + view_width - 1, bar, left + view_width - 1, height], fill=(60, 60, 60), width=2)
        left += view_width
    return canvas
