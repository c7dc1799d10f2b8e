using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Runtime.Versioning;

namespace Transport.Winsock.Interop;

/// <summary>
/// Asks the Winsock provider behind a socket for its Microsoft extension functions. A non-IFS layered
/// provider (some VPN or antivirus products) may not have them, and then the transport cannot reuse.
/// </summary>
[SupportedOSPlatform("windows")]
internal static partial class WinsockExtensions
{
    // _WSAIORW(IOC_WS2, 6)
    private const uint SioGetExtensionFunctionPointer = 0xC8000006;

    public static readonly Guid AcceptEx = new(0xb5367df1, 0xcbac, 0x11cf, 0x95, 0xca, 0x00, 0x80, 0x5f, 0x48, 0xa1, 0x92);
    public static readonly Guid DisconnectEx = new(0x7fda2e11, 0x8630, 0x436f, 0xa0, 0x31, 0xf5, 0x36, 0xa6, 0xee, 0xc1, 0x57);

    [LibraryImport("ws2_32.dll", SetLastError = true)]
    private static unsafe partial int WSAIoctl(
        SafeSocketHandle socket,
        uint ioControlCode,
        void* inBuffer,
        uint inBufferLength,
        void* outBuffer,
        uint outBufferLength,
        out uint bytesReturned,
        nint overlapped,
        nint completionRoutine);

    /// <summary>Whether the socket's provider has the extension function <paramref name="id"/>; the Winsock error when it has not.</summary>
    public static unsafe SocketError Probe(Socket socket, Guid id)
    {
        nint function = 0;
        var result = WSAIoctl(socket.SafeHandle, SioGetExtensionFunctionPointer, &id, (uint)sizeof(Guid), &function, (uint)sizeof(nint), out _, 0, 0);
        if (result != 0)
        {
            return (SocketError)Marshal.GetLastPInvokeError();
        }

        return function == 0 ? SocketError.OperationNotSupported : SocketError.Success;
    }
}
